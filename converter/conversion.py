"""The conversion step: one task's job, from its video in GridFS to one MP3.

Exactly one MP3 per job: each attempt takes a lease on the job and writes a
new GridFS id that is recorded on the job *before* writing; the next attempt
deletes leftovers of crashed ones, and DONE is set only by the attempt that
holds the lease (renewed as progress is made), so a losing duplicate deletes
its own MP3. A job deleted meanwhile (DeleteJob) fails that renewal too:
the attempt stops within PROGRESS_EVERY_S and deletes what it wrote. What
becomes of the delivery is converter/policy.py's call.

A job whose upload is still arriving (`uploading`, gateway/early_jobs.py) is
read as it grows (storage/gridfs_growing.py); only a conversion of the
complete file may end it FAILED (_while_uploading).
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import BinaryIO, cast

import pymongo.errors
from bson import ObjectId
from bson.errors import InvalidId

from video2mp3.converter import mp3_store, policy
from video2mp3.converter.config import CPUS, ConverterConfig
from video2mp3.converter.policy import (
    Cancelled,
    DeadLetter,
    JobGone,
    LostLease,
    Outcome,
    StorageUnavailable,
    UploadStalled,
)
from video2mp3.converter.transcode import ConversionError, transcode
from video2mp3.converter.video_source import VideoSource
from video2mp3.core import request_id
from video2mp3.domain import jobs, retention
from video2mp3.domain.queue import MAX_DELIVERIES, decode_task
from video2mp3.storage.gridfs_growing import GrowingDownload
from video2mp3.storage.gridfs_upload import ChunkedUpload
from video2mp3.storage.mongo import Mongo
from video2mp3.telemetry import metrics, tracing

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5


@contextlib.contextmanager
def _storage():
    """MongoDB errors become the policy's StorageUnavailable."""
    try:
        yield
    except pymongo.errors.PyMongoError as e:
        raise StorageUnavailable(str(e)) from e


class JobRunner:
    """`stopping`: take no new work (waits give up and hand back);
    `cancel`: the shutdown grace is over, stop the conversion in hand."""

    def __init__(self, cfg: ConverterConfig, mongo: Mongo,
                 stopping: threading.Event, cancel: threading.Event,
                 busy: ctypes.Array | None = None, slot: int = 0):
        self.cfg = cfg
        # A mark per worker of this converter, set while converting (shared).
        self.busy, self.slot = busy, slot
        self.overlap = False  # decided per task (converter/policy.overlap)
        self._waiting: Callable[[], int] = lambda: 0  # the task's queue, behind it
        self.mongo = mongo
        self.jobs = jobs.JobStore(mongo.jobs)
        self.stopping = stopping
        self.cancel = cancel

    # --- a task (on the consumer's task thread) ------------------------------

    def process(self, body: bytes, waiting: Callable[[], int] = lambda: 0) -> Outcome:
        """Converts one task message (`waiting()`: tasks queued behind it now). Never raises."""
        try:
            task = decode_task(body)
        except ValueError as e:
            log.error("dropping message: %s", e)
            return Outcome.ACK
        job_id = task.job_id
        self._waiting = waiting
        with request_id.bound(job_id=job_id), self._counted_busy() as others:
            self.overlap = policy.overlap(self.cfg.overlap_mode, CPUS, self.cfg.workers, others, waiting())
            return self._process(job_id)

    @contextlib.contextmanager
    def _counted_busy(self):
        """Marks this worker as converting; yields how many others are."""
        if self.busy is None:
            yield 0
            return
        self.busy[self.slot] = 1
        try:
            yield sum(self.busy) - 1
        finally:
            self.busy[self.slot] = 0

    def _alone(self) -> bool:
        """Whether a job that started with overlap may go on using every
        core: asked again every ~25 s of audio (converter/split_encode.py), by
        the same rule with what is in sight now, so a backlog that builds up
        behind it gets the second core back within a segment."""
        others = sum(self.busy) - 1 if self.busy is not None else 0
        return policy.overlap(self.cfg.overlap_mode, CPUS, self.cfg.workers, others, self._waiting())

    def _process(self, job_id: str) -> Outcome:
        while True:
            try:
                with _storage():
                    return self._convert(job_id)
            except Exception as e:
                outcome = policy.outcome_for(e)
                if outcome is None:
                    log.warning("job %s: storage unavailable (%s); retrying", job_id, e)
                    if self.stopping.wait(self.cfg.retry_delay_s):
                        metrics.CONVERSIONS.labels("interrupted").inc()
                        return Outcome.HAND_BACK
                    continue
                if isinstance(e, Cancelled):
                    metrics.CONVERSIONS.labels("interrupted").inc()
                    log.info("job %s interrupted by shutdown; handed back", job_id)
                elif isinstance(e, UploadStalled):
                    metrics.CONVERSIONS.labels("deleted").inc()
                    log.info("job %s: its upload stopped; its conversion stopped and its MP3 was removed",
                             job_id)
                elif isinstance(e, JobGone):
                    metrics.CONVERSIONS.labels("deleted").inc()
                    log.info("job %s was deleted; its conversion stopped and its MP3 was removed", job_id)
                elif isinstance(e, LostLease):
                    metrics.CONVERSIONS.labels("superseded").inc()
                    log.warning("job %s was taken over by another worker; this attempt stops", job_id)
                else:
                    metrics.CONVERSIONS.labels("error").inc()
                    log.exception("job %s: unexpected error; requeueing", job_id)
                return outcome

    def _convert(self, job_id: str) -> Outcome:
        mp3_fid = ObjectId()
        while True:
            job = self.jobs.get(job_id)
            if job is None or job.deleted:
                metrics.CONVERSIONS.labels("deleted").inc()
                log.info("job %s no longer exists (deleted); task acked", job_id)
                return Outcome.ACK
            if job.state.final:
                metrics.CONVERSIONS.labels("duplicate").inc()
                log.info("job %s already %s; duplicate task acked", job_id, job.state)
                return Outcome.ACK
            before = self.jobs.start_attempt(job_id, mp3_fid, self.cfg.lease_s)
            if before is not None:
                break
            # Another worker holds a live lease on it (a duplicate delivery):
            # wait until it finishes, or until its lease runs out because it died.
            if self.stopping.wait(1.0):
                metrics.CONVERSIONS.labels("interrupted").inc()
                return Outcome.HAND_BACK
        self._delete_leftovers(job_id, [f for f in before.pending_mp3_fids if f != mp3_fid])
        log.info("job %s: converting %s (attempt %d)", job_id, before.filename, before.attempts + 1,
                 extra={"step": "converting"})
        with tracing.tracer().start_as_current_span(
                "convert", attributes={"video2mp3.job_id": job_id, "video2mp3.attempt": before.attempts + 1,
                                       "video2mp3.video_bytes": before.video_size}) as span:
            return self._transcode(job_id, mp3_fid, before, span)

    def _transcode(self, job_id: str, mp3_fid: ObjectId, before: jobs.Job, span) -> Outcome:
        started = time.monotonic()
        attempt = _Attempt(mp3_store.open_mp3(self.mongo, mp3_fid, before))
        on_progress = self._progress_writer(job_id, mp3_fid)
        try:
            if before.uploading:
                result = self._while_uploading(job_id, mp3_fid, before, attempt, on_progress)
            else:
                result = self._convert_from(self._video(before), before, attempt, on_progress)
            attempt.dst.close()
        except (LostLease, JobGone):
            self._discard(job_id, mp3_fid, attempt.dst)
            raise
        except Exception as e:
            # Deleted under us: its video's chunks vanish mid-read.
            if self._gone(job_id):
                self._discard(job_id, mp3_fid, attempt.dst)
                raise JobGone() from e
            if not isinstance(e, ConversionError):
                self._discard_quietly(job_id, mp3_fid, attempt.dst)
                raise
            self._discard(job_id, mp3_fid, attempt.dst)
            if self.jobs.finish_failed(job_id, str(e)):
                retention.after_final(self.mongo, self.jobs, job_id, self.cfg.retention)
            metrics.CONVERSIONS.labels("failed").inc()
            tracing.fail(span, str(e))
            log.info("job %s FAILED: %s", job_id, e, extra={"step": "failed"})
            return Outcome.ACK
        finally:
            metrics.CONVERSION_READ_BYTES.observe(attempt.read_bytes)
            span.set_attribute("video2mp3.read_bytes", attempt.read_bytes)
        if result.header_patch:
            mp3_store.patch_bytes(self.mongo, mp3_fid, *result.header_patch)
        if self.jobs.finish_done(job_id, mp3_fid, result.bytes_written):
            seconds = time.monotonic() - started
            metrics.CONVERSIONS.labels("done").inc()
            metrics.CONVERSION_SECONDS.observe(seconds)
            metrics.AUDIO_SECONDS.inc(result.duration_seconds)
            metrics.ENCODER_JOINS.labels("joined").inc(result.encoder_joins)
            metrics.ENCODER_JOINS.labels("fallback").inc(result.join_fallbacks)
            if seconds > 0:
                metrics.REALTIME_FACTOR.observe(result.duration_seconds / seconds)
            span.set_attribute("video2mp3.audio_seconds", result.duration_seconds)
            log.info("job %s DONE: %d bytes, %.2fs of audio in %.2fs", job_id, result.bytes_written,
                     result.duration_seconds, seconds,
                     extra={"step": "done", "seconds": round(seconds, 3),
                            "read_bytes": attempt.read_bytes, "video_bytes": before.video_size,
                            "encoder_joins": result.encoder_joins})
            retention.after_final(self.mongo, self.jobs, job_id, self.cfg.retention)
        else:
            metrics.CONVERSIONS.labels("superseded").inc()
            log.info("job %s was finished by another attempt; discarding this MP3", job_id)
            self._discard(job_id, mp3_fid)
        return Outcome.ACK

    def _video(self, before: jobs.Job, **kw) -> VideoSource:
        """The job's video in GridFS: bounded ranges of chunks
        (storage/gridfs_download.py), only where the audio may be, fetched ahead
        of the decoder (converter/video_source.py); `growing=True` while the
        upload still arrives."""
        return VideoSource(self.mongo.db, _oid(before.video_fid), on_fetch=metrics.GRIDFS_READ_BYTES.inc, **kw)

    def _convert_from(self, video: VideoSource, before: jobs.Job, attempt: _Attempt, on_progress):
        """Convert `video` into attempt.dst, counting what was fetched."""
        with video:
            try:
                return transcode(cast(BinaryIO, video.stream), attempt.dst, before.options,
                                 filename=before.filename, on_progress=on_progress,
                                 overlap=self.overlap,
                                 encoders=policy.encoders(self.cfg.overlap_mode, CPUS, self.cfg.workers)
                                 if self.overlap else 1,
                                 split_while=self._alone)
            finally:
                attempt.read_bytes += video.bytes_fetched

    def _while_uploading(self, job_id: str, mp3_fid: ObjectId, before: jobs.Job,
                         attempt: _Attempt, on_progress):
        """Convert a video that is still arriving (gateway/early_jobs.py). If
        that fails, the file may just not be streamable after all: wait for the
        upload's end and convert the complete file the usual way, the only
        conversion that may call the job FAILED."""
        growing = self._video(before, growing=True, on_wait=self._upload_watch(job_id, mp3_fid, on_progress))
        try:
            return self._convert_from(growing, before, attempt, on_progress)
        except ConversionError as e:
            metrics.STREAM_FALLBACKS.inc()
            log.info("job %s: converting while uploading failed (%s); converting the complete "
                     "file once it is uploaded", job_id, e, extra={"step": "stream_fallback"})
        attempt.dst.abort()  # its chunks go; the same MP3 id starts again from nothing
        assert isinstance(growing.stream, GrowingDownload)
        growing.stream.wait_until_complete()
        attempt.dst = mp3_store.open_mp3(self.mongo, mp3_fid, before)
        return self._convert_from(self._video(before), before, attempt, on_progress)

    def _upload_watch(self, job_id: str, mp3_fid: ObjectId, on_progress):
        """GrowingDownload's on_wait: while nothing decodes, keep the lease
        (on_progress renews it every PROGRESS_EVERY_S and notices a delete
        or a shutdown) and give the job up if its upload's gateway died."""
        last = {"at": time.monotonic()}

        def on_wait() -> None:
            on_progress(0.0)  # progress only grows: 0 renews without moving it
            now = time.monotonic()
            if now - last["at"] < jobs.UPLOAD_TOUCH_S:
                return
            last["at"] = now
            cutoff = jobs.now() - dt.timedelta(seconds=jobs.UPLOAD_STALE_S)
            if self.jobs.abandon_upload(job_id, mp3_fid, cutoff):
                log.warning("job %s: its upload stopped without ending (no heartbeat for %.0f s); "
                            "given up", job_id, jobs.UPLOAD_STALE_S)
                raise UploadStalled()

        return on_wait

    def _gone(self, job_id: str) -> bool:
        try:
            job = self.jobs.get(job_id)
        except pymongo.errors.PyMongoError:
            return False
        return job is None or job.deleted

    def _discard(self, job_id: str, mp3_fid: ObjectId, dst: ChunkedUpload | None = None) -> None:
        """Delete this attempt's MP3. `dst` while still writing: its abort()
        deletes every chunk it stored by number, even after a DeleteJob removed
        the first ones (ranged deletes stop at the first empty range)."""
        if dst is not None and not dst.closed:
            dst.abort()
        mp3_store.delete_quietly(self.mongo, mp3_fid)
        self.jobs.forget_pending(job_id, [mp3_fid])

    def _discard_quietly(self, job_id: str, mp3_fid: ObjectId, dst: ChunkedUpload | None = None) -> None:
        """Drop this attempt and hand the job back, best effort while MongoDB may
        be down; the next attempt cleans up whatever is left."""
        try:
            self._discard(job_id, mp3_fid, dst)
            self.jobs.release(job_id, mp3_fid)
        except pymongo.errors.PyMongoError:
            pass

    def _delete_leftovers(self, job_id: str, leftovers: list) -> None:
        """MP3s of earlier attempts that crashed mid-write."""
        for fid in leftovers:
            mp3_store.delete_quietly(self.mongo, fid)
        if leftovers:
            self.jobs.forget_pending(job_id, leftovers)
            log.info("job %s: removed %d half-written MP3(s) of earlier attempts", job_id, len(leftovers))

    def _progress_writer(self, job_id: str, mp3_fid: ObjectId):
        """Writes 0..99 (DONE writes 100), never less than before, every
        PROGRESS_EVERY_S; that write renews the lease and notices a delete."""
        last = {"at": 0.0}
        best = [0]  # the highest percent written

        def on_progress(fraction: float) -> None:
            if self.cancel.is_set():
                raise Cancelled()
            # Kept even when not written now: while a streamed upload is
            # awaited, only on_progress(0.0) calls come (_upload_watch).
            percent = best[0] = max(best[0], min(99, int(fraction * 100)))
            now = time.monotonic()
            if now - last["at"] < PROGRESS_EVERY_S:
                return
            last["at"] = now
            try:
                still_ours = self.jobs.renew(job_id, mp3_fid, percent, self.cfg.lease_s)
            except pymongo.errors.PyMongoError:
                return  # progress is advisory; the final write is what counts
            if not still_ours:
                raise JobGone() if self._gone(job_id) else LostLease()

        return on_progress

    # --- a dead letter (on the consumer's connection thread) -----------------

    def dead_letter(self, body: bytes, headers: dict, queue_copy: Callable[[dict], bool]) -> Outcome:
        """A message dead-lettered after MAX_DELIVERIES. If its conversion
        really started that often, the file keeps killing workers: the job
        ends FAILED and the MP3s its attempts half-wrote are deleted. If not,
        the deliveries were spent on lost connections (RabbitMQ cuts), so the
        task is queued again (`queue_copy(extra headers)`), a bounded number of
        times. ACK, or REQUEUE while MongoDB is unreachable."""
        try:
            job_id = decode_task(body).job_id
            job = self.jobs.get(job_id)
            attempts, revived = (job.attempts if job else 0), policy.revivals(headers)
            decision = policy.dead_letter(job.state if job else None, attempts, revived,
                                          max_deliveries=MAX_DELIVERIES)
            metrics.QUEUE_DEAD_LETTERS.labels(decision.value).inc()
            if decision is DeadLetter.REVIVE and queue_copy(policy.revived_headers(revived)):
                log.warning("job %s dead-lettered after only %d conversion attempt(s); queued again",
                            job_id, attempts)
            elif decision is not DeadLetter.DROP:
                # Also when the copy could not be queued: never leave the job hanging.
                self._fail_crashed(job_id)
        except ValueError as e:
            log.error("dropping unreadable dead-lettered message: %s", e)
        except pymongo.errors.PyMongoError as e:
            log.warning("cannot settle dead-lettered job yet: %s", e)
            return Outcome.REQUEUE
        return Outcome.ACK

    def _fail_crashed(self, job_id: str) -> None:
        if self.jobs.finish_failed(job_id, policy.crashed_reason(MAX_DELIVERIES)):
            log.error("job %s dead-lettered after %d deliveries; marked FAILED", job_id, MAX_DELIVERIES)
            retention.after_final(self.mongo, self.jobs, job_id, self.cfg.retention)
        job = self.jobs.get(job_id)
        if job is not None and job.state == jobs.FAILED:
            self._delete_leftovers(job_id, list(job.pending_mp3_fids))


class _Attempt:
    """What one attempt is writing (a fallback restarts it) and how much it read."""

    def __init__(self, dst: ChunkedUpload):
        self.dst = dst
        self.read_bytes = 0


def _oid(value) -> ObjectId:
    try:
        if value is None:  # ObjectId(None) would make up a new id
            raise InvalidId("no video")
        return value if isinstance(value, ObjectId) else ObjectId(value)
    except (InvalidId, TypeError):
        raise ConversionError("the job's video reference is not valid") from None
