"""UploadVideo: stream the client's chunks straight into GridFS, then record
the job and publish it.

Nothing is half-kept: any failure before the job is recorded (bad options,
empty body, size limit, client cancel, storage error, the store's disk nearly
full: gateway/storage_space.py, a limit per job or a quota of the caller:
gateway/quotas.py) aborts the GridFS upload,
which deletes its chunks; chunks a killed gateway could not delete are removed
later by gateway/janitor.py. Memory holds a few MB per upload, whatever its size
(storage/gridfs_upload.py). An upload with a request_id reserves it before
storing anything (gateway/request_ids.py), so a retry never stores a copy.

A streamable upload (gateway/container_sniff.py, judged from its first bytes)
gets its job, hidden, as soon as those bytes are in, and is converted while
the rest arrives (gateway/early_jobs.py); its answer is the job as it is when
the upload ends. Its failure deletes that job as DeleteJob would. So does an
MP4 whose index comes at the end, once `spool_after_bytes` have arrived: a
converter with nothing else to do copies it to its disk as it arrives
(converter/spool.py), and only the conversion is left once the upload ends.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable
from typing import BinaryIO, cast

import pymongo.errors
from bson import ObjectId

from video2mp3.core.errors import Cancelled, InvalidArgument, Reason, ResourceExhausted, Unavailable
from video2mp3.core.tokens import Caller
from video2mp3.domain import jobs
from video2mp3.domain.queue import Publisher, PublishError
from video2mp3.formats import durations
from video2mp3.gateway import container_sniff, form_upload, validation
from video2mp3.gateway.early_jobs import EarlyJobs, Heartbeat
from video2mp3.gateway.outbox import FairQueueSettings, Outbox
from video2mp3.gateway.quotas import Quotas, UploadCheck
from video2mp3.gateway.request_ids import RequestIds, Reservation
from video2mp3.gateway.storage_space import StorageSpace
from video2mp3.storage.gridfs_download import ChunkedDownload, delete_file
from video2mp3.storage.gridfs_upload import ChunkedUpload
from video2mp3.storage.mongo import VIDEOS_BUCKET, Mongo
from video2mp3.telemetry import metrics, tracing

log = logging.getLogger(__name__)

# "Try again in a few seconds", as RetryInfo.
BUSY_RETRY_S = 3.0
# An MP4 with its index at the end gets its job once this much has arrived
# (module doc; SPOOL_AFTER_BYTES), and never before it is over the express
# lane's size (EXPRESS_MAX_BYTES): a file that may still take that lane is
# converted once complete, at once; below this, reading it back costs little.
SPOOL_AFTER_BYTES = 16 * 1024 * 1024


class Uploads:
    def __init__(self, mongo: Mongo, job_store: jobs.JobStore, publisher: Publisher,
                 max_bytes: int, max_concurrent: int, space: StorageSpace | None = None,
                 quotas: Quotas | None = None, fair: FairQueueSettings | None = None,
                 dispatch_interval_s: float = 0.5, spool_after_bytes: int = SPOOL_AFTER_BYTES):
        self.request_ids = RequestIds(mongo.db, job_store)
        self.mongo = mongo
        self.jobs = job_store
        self.publisher = publisher
        self.max_bytes = max_bytes
        self.space = space
        self.quotas = quotas
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.heartbeat = Heartbeat(job_store)  # started by gateway/__main__.py
        self.early = EarlyJobs(mongo, job_store, self.publish, self.heartbeat)
        # Decides when a recorded job is published, and on which lane (started by gateway/__main__.py).
        fair = fair or FairQueueSettings()
        self.outbox = Outbox(job_store, mongo.db["dispatch"], self.send, dispatch_interval_s,
                             fair, publisher.express_consumed)
        # None: such uploads get their job at the end, as any other.
        self.spool_after = max(spool_after_bytes, fair.express_max_bytes + 1) if spool_after_bytes else None

    def handle(self, requests, context, caller: Caller) -> jobs.Job:
        """Returns the created job, or raises (core/errors.py makes the
        status; a MongoDB error is UNAVAILABLE) having kept nothing."""
        if not self._slots.acquire(blocking=False):
            raise ResourceExhausted("too many uploads in progress; retry in a few seconds",
                                    reason=Reason.TOO_MANY_UPLOADS, retry_after_s=BUSY_RETRY_S)
        try:
            return self._handle(requests, context, caller)
        finally:
            self._slots.release()

    def _handle(self, requests, context, caller: Caller) -> jobs.Job:
        first = next(requests, None)
        if first is None:
            raise _empty()
        options = validation.conversion_options(first)
        filename = validation.filename(first.filename)
        request_id = validation.request_id(first.request_id)
        if not request_id:
            return self._store(first, requests, context, caller, options, filename, None)
        found = self.request_ids.begin(caller.user_id, request_id, context)
        if isinstance(found, jobs.Job):
            self._drain(requests)
            return found
        try:
            return self._store(first, requests, context, caller, options, filename, found,
                               request_id)
        finally:
            found.release()

    def _store(self, first, requests, context, caller: Caller, options, filename: str,
               reservation: Reservation | None, request_id: str = "") -> jobs.Job:
        started = time.monotonic()
        # Quotas used up: refused before anything is stored (gateway/quotas.py).
        check = self.quotas.start(caller) if self.quotas else None
        stream = ChunkedUpload(
            self.mongo.db, VIDEOS_BUCKET, filename,
            metadata={"user_id": caller.user_id,
                      "content_type": first.body.content_type or "application/octet-stream"},
            # The disk-space guard: checks now (StorageFull before anything is
            # written) and about every 4 MB; StorageFull aborts like any error.
            before_store=self.space.guard() if self.space else None,
            chunk_db=self.mongo.chunk_db,
        )
        job_id = jobs.new_job_id()
        early: list[jobs.Job] = []

        def on_streamable(name: str, spool: bool) -> None:
            job = self.early.start(job_id=job_id, user_id=caller.user_id, user_email=caller.email,
                                   filename=name, video_fid=stream._id, options=options,
                                   request_id=request_id, trace=tracing.carrier(), spool=spool)
            if job is not None:
                early.append(job)

        try:
            size = self._write_all(stream, itertools.chain([first], requests), context,
                                   first.body.content_type, named_by_query=bool(first.filename),
                                   on_data=reservation.renew if reservation else None,
                                   on_streamable=on_streamable, check=check, options=first)
            video_fid: ObjectId = stream._id
            if check is not None and check.declared_s is None and check.is_mp4:
                self._check_mp4_index(check, video_fid, size, first)
        except BaseException:
            if early:
                self.early.abort(early[0])
            raise
        filename = stream.filename
        if early:
            job = self._finish_early(early[0], size, filename, video_fid, check.declared_s if check else None)
        else:
            job = self._record(job_id, caller, filename, video_fid, size, options, request_id,
                               check.declared_s if check else None)
            if job.id != job_id:  # the first upload with this request_id: its job
                return job
        metrics.UPLOAD_BYTES.inc(size)
        metrics.UPLOADS.labels("while_uploading" if early else "after_upload").inc()
        metrics.UPLOAD_SECONDS.observe(time.monotonic() - started)
        log.info("job %s recorded: %s (%d bytes) for %s", job.id, filename, size, caller.email,
                 extra={"job_id": job.id, "step": "recorded", "bytes": size})
        if not early:
            self.publish(job)
        return job

    def _record(self, job_id: str, caller: Caller, filename: str, video_fid: ObjectId, size: int,
                options, request_id: str, declared_s: float | None = None) -> jobs.Job:
        """The job of a complete upload (not converted while it arrived)."""
        def create() -> jobs.Job:
            return self.jobs.create(job_id=job_id, user_id=caller.user_id, user_email=caller.email,
                                    filename=filename, video_fid=video_fid, video_size=size,
                                    options=options, request_id=request_id, trace=tracing.carrier(),
                                    declared_seconds=declared_s)
        try:
            # A dead gateway's hidden job may hold the request_id: freed once.
            return self.early.create(create, caller.user_id, request_id)
        except pymongo.errors.DuplicateKeyError:
            # Another upload with this request_id won (our reservation had lapsed): its job it is.
            self._delete_quietly(video_fid)
            first_job = self.jobs.get_by_request(caller.user_id, request_id)
            if first_job is None:
                raise
            return first_job
        except pymongo.errors.PyMongoError:
            self._delete_quietly(video_fid)
            raise

    def _finish_early(self, job: jobs.Job, size: int, filename: str, video_fid: ObjectId,
                      declared_s: float | None) -> jobs.Job:
        """The upload of a job created early ended: show the job, as it is now
        (with the minutes it declares, which count until it is converted)."""
        try:
            done = self.early.finish(job, size, filename, declared_s)
        except pymongo.errors.PyMongoError:
            self.early.abort(job)
            self._delete_quietly(video_fid)
            raise
        if done is None:  # deleted while uploading (its account, or the janitor): keep nothing
            self._delete_quietly(video_fid)
            raise Unavailable("the upload was interrupted; send it again",
                              reason=Reason.STORAGE_UNAVAILABLE, retry_after_s=BUSY_RETRY_S)
        return done

    def _drain(self, requests) -> None:
        """Read a retry's remaining bytes and drop them, so an HTTP client
        finishes sending before it reads the answer. At most max_bytes."""
        read = 0
        try:
            for m in requests:
                read += len(m.body.data)
                if read > self.max_bytes:
                    return
        except Exception:  # noqa: BLE001 - the client went away: nothing to answer anyway
            return

    def _write_all(self, stream, messages, context, content_type: str, named_by_query: bool,
                   on_data=None, on_streamable=None, check: UploadCheck | None = None, options=None) -> int:
        """Writes the video's bytes from `messages` into `stream`; returns the size.
        On any failure the upload is aborted (its chunks deleted), then it raises.
        on_streamable(filename, spool): called once the first bytes show a
        streamable file (spool False) or an MP4 with its index at the end, which
        a converter may copy to its disk as it arrives (spool True).
        check: the upload's quotas and limits (gateway/quotas.py), told the
        size as it grows and the first and last bytes, which may declare its length."""
        size = 0
        early = _EarlyStart(self.spool_after) if on_streamable is not None else None
        checked = _Checked(check, options)
        body: Iterable[bytes]
        try:
            # Receive the next bytes while the last ones are stored, a few MB per insert.
            stream.write_behind()
            if form_upload.is_form(content_type):
                body = form_upload.FormFile(content_type, messages)
            else:
                body = (m.body.data for m in messages)
            for data in body:
                size += len(data)
                if size > self.max_bytes:
                    raise ResourceExhausted(
                        f"the upload is larger than the {self.max_bytes}-byte limit",
                        reason=Reason.UPLOAD_TOO_LARGE, metadata={"limit_bytes": str(self.max_bytes)},
                        # Envoy's REST side answers 413 (deploy/envoy.yaml's Lua filter).
                        trailers=[("x-http-status", "413")])
                checked.add(size, data)
                if data:
                    stream.write(data)
                    if on_data is not None:
                        on_data()
                    if early is not None and (spool := early.feed(data, size)) is not None:
                        on_streamable(self._form_name(body, named_by_query) or stream.filename, spool=spool)
            if not _all_declared(context, size) and _reset_after_end(context):
                raise Cancelled("the client cancelled the upload", reason=Reason.UPLOAD_CANCELLED)
            if size == 0:
                raise _empty()
            checked.end()
            stream.filename = self._form_name(body, named_by_query) or stream.filename
            stream.close()
            return size
        except BaseException:
            # Refused, storage failed, the client went away mid-stream (grpc
            # raises from the request iterator) or we are shutting down: keep nothing.
            self._abort_quietly(stream)
            raise

    def _check_mp4_index(self, check: UploadCheck, video_fid: ObjectId, size: int, options) -> None:
        """An MP4/MOV whose index came last declares its length there: its box
        headers are read back (a few small reads). Over a limit or quota, the
        stored video is deleted and the upload refused like any other."""
        try:
            with ChunkedDownload(self.mongo.db, VIDEOS_BUCKET, video_fid) as f:
                seconds = durations.mp4_from_file(cast(BinaryIO, f), size)
            check.declared(seconds, options)
        except BaseException:
            self._delete_quietly(video_fid)
            raise

    @staticmethod
    def _form_name(body, named_by_query: bool) -> str:
        """A form's own file name, unless the query named the upload."""
        if isinstance(body, form_upload.FormFile) and body.filename and not named_by_query:
            return validation.filename(body.filename)
        return ""

    def publish(self, job: jobs.Job) -> bool:
        """A recorded job: published now if it is its user's turn (gateway/outbox.py),
        else it stays unpublished until then; so does a job whose publish
        failed, for the outbox to retry. True if it was published."""
        return self.outbox.offer(job)

    def send(self, job: jobs.Job, express: bool = False) -> bool:
        """Publish a recorded job now (the outbox decided), on the express lane
        or not; False if RabbitMQ did not confirm it. Within its upload's request
        id and trace, even when the outbox calls."""
        with tracing.resumed(job.trace):
            return self._publish(job, express)

    def _publish(self, job: jobs.Job, express: bool) -> bool:
        try:
            self.publisher.publish(jobs.task_for(job), express=express)
        except PublishError as e:
            log.warning("job %s not published yet (%s); the outbox will retry", job.id, e,
                        extra={"job_id": job.id, "step": "publish_failed"})
            return False
        lane = jobs.EXPRESS_LANE if express else jobs.NORMAL_LANE
        log.info("job %s queued (%s lane)", job.id, lane, extra={"job_id": job.id, "step": "queued"})
        try:
            self.jobs.mark_published(job.id, lane)
        except pymongo.errors.PyMongoError as e:
            # Published but not marked: the outbox may publish again; the
            # converter ignores tasks whose job is already final.
            log.warning("job %s published but not marked: %s", job.id, e)
        return True

    def _abort_quietly(self, stream) -> None:
        try:
            stream.abort()
        except Exception as e:  # noqa: BLE001 - storage down too: the janitor of orphan chunks finds it later
            log.warning("could not abort GridFS upload %s: %s", stream._id, e)

    def _delete_quietly(self, fid) -> None:
        try:
            delete_file(self.mongo.db, VIDEOS_BUCKET, fid)  # in ranges: see gridfs_download
        except Exception as e:  # noqa: BLE001 - best effort; the janitor finds leftovers
            log.warning("could not delete video %s: %s", fid, e)


# grpcio's sync server ends the request iterator normally when the stream is
# *reset* (a gRPC client cancelling, or Envoy when a REST client disconnects
# mid-body), and marks the RPC cancelled a moment later, when it has handled
# the reset's second event: measured here at about 0.1 ms, this waits up to
# 1000 times that before a stream end is taken for the client's own, unless
# the client declared its size and all of it came (_all_declared).
END_OF_STREAM_SETTLE_S = 0.1


class _EarlyStart:
    """Whether and when an upload gets its job before it ends (module doc),
    judged from its first bytes (gateway/container_sniff.py)."""

    def __init__(self, spool_after: int | None):
        self.head = bytearray()  # the first bytes, until container_sniff has decided
        self.spool_after = spool_after
        self.deciding = True
        self.verdict = container_sniff.Verdict.NEED_MORE  # until decided (NEED_MORE after SNIFF_BYTES: never)
        self.started = False

    def feed(self, data: bytes, size: int) -> bool | None:
        """After each piece (`size`: bytes so far). None: not now; else start
        the job now, copied as it arrives (True, converter/spool.py) or read as
        it grows (False). Says so once."""
        if self.started:
            return None
        if self.deciding:
            self.head += data[:container_sniff.SNIFF_BYTES - len(self.head)]
            self.verdict = container_sniff.verdict(bytes(self.head))
            if self.verdict is not container_sniff.Verdict.NEED_MORE or len(self.head) >= container_sniff.SNIFF_BYTES:
                self.deciding, self.head = False, bytearray()
        if self.verdict is container_sniff.Verdict.STREAMABLE:
            self.started = True
            return False
        if self.verdict is container_sniff.Verdict.INDEX_AT_END and self.spool_after is not None \
                and size >= self.spool_after:
            self.started = True
            return True
        return None


def _all_declared(context, size: int) -> bool:
    """True if the body Envoy saw declared (`x-upload-length`, from a REST
    upload's Content-Length: deploy/envoy.yaml) is exactly what arrived: then
    the stream cannot have been cut short, and no settling wait is needed."""
    for key, value in context.invocation_metadata():
        if key == "x-upload-length":
            return isinstance(value, str) and value.isdigit() and int(value) == size
    return False


def _reset_after_end(context) -> bool:
    """True if the stream that just ended was in fact reset by the client."""
    ended = threading.Event()
    if not context.add_callback(ended.set):  # the RPC has terminated already
        return True
    return ended.wait(END_OF_STREAM_SETTLE_S) or not context.is_active()


class _Checked:
    """Tells an upload's UploadCheck (gateway/quotas.py; None: none) its size
    as it grows, its first bytes once there are enough and its last ones at
    its end, which may declare its length; keeps only those, whatever the size."""

    def __init__(self, check: UploadCheck | None, options) -> None:
        self.check, self.options = check, options
        self.head = b""
        self.tail = b""

    def add(self, size: int, data: bytes) -> None:
        if self.check is None:
            return
        self.check.bytes_in(size)
        self.tail = data[-durations.TAIL_BYTES:] if len(data) >= durations.TAIL_BYTES else \
            (self.tail + data)[-durations.TAIL_BYTES:]
        if len(self.head) < durations.HEAD_BYTES:
            self.head += data[:durations.HEAD_BYTES - len(self.head)]
            if len(self.head) >= durations.HEAD_BYTES:
                self.check.head(self.head, self.options)

    def end(self) -> None:
        if self.check is not None:
            self.check.head(self.head, self.options)
            self.check.tail(self.head, self.tail, self.options)


def _empty() -> InvalidArgument:
    return InvalidArgument("the upload is empty: send the video's bytes", reason=Reason.UPLOAD_EMPTY)
