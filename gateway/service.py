"""MediaService: uploads, jobs (get, watch, list, delete), MP3 downloads and health."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import unicodedata
from urllib.parse import quote

import pymongo.errors
from google.api import httpbody_pb2
from google.protobuf import empty_pb2

from video2mp3.core.errors import FailedPrecondition, InvalidArgument, NotFound, Reason
from video2mp3.domain import jobs, retention
from video2mp3.domain.mp3_files import zip_name
from video2mp3.gateway import validation, zip_download
from video2mp3.gateway.auth import caller
from video2mp3.gateway.quotas import Quotas
from video2mp3.gateway.tus import Tus, tus_errors
from video2mp3.gateway.uploads import Uploads
from video2mp3.gateway.user_check import UserCheck
from video2mp3.gateway.user_data import delete_user_data
from video2mp3.gateway.watch import WatchHub
from video2mp3.gateway.webhooks import Webhooks, WebhookSettings
from video2mp3.media.v1 import media_pb2, media_pb2_grpc
from video2mp3.rpc.health import DependencyMonitor
from video2mp3.storage.gridfs_download import ChunkedDownload
from video2mp3.storage.mongo import MP3S_BUCKET, Mongo
from video2mp3.telemetry import metrics

log = logging.getLogger(__name__)

DOWNLOAD_CHUNK = 256 * 1024
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000


class MediaService(media_pb2_grpc.MediaServiceServicer):
    def __init__(self, mongo: Mongo, job_store: jobs.JobStore, uploads: Uploads,
                 monitor: DependencyMonitor, watch_hub: WatchHub,
                 retention_settings: retention.RetentionSettings, users: UserCheck,
                 tus: Tus | None = None, webhooks: Webhooks | None = None, quotas: Quotas | None = None):
        self.mongo = mongo
        self.tus = tus or Tus(mongo, job_store, uploads, expiry_s=86400.0)
        self.webhooks = webhooks or Webhooks(mongo.db, WebhookSettings())
        self.users = users
        self.jobs = job_store
        self.uploads = uploads
        self.monitor = monitor
        self.watch_hub = watch_hub
        self.retention = retention_settings
        self.quotas = quotas

    def _proto(self, job: jobs.Job) -> media_pb2.Job:
        return jobs.to_proto(job, retention.expire_time(job, self.retention),
                             retention.purge_time(job, self.retention))

    def UploadVideo(self, request_iterator, context):
        return self._proto(self.uploads.handle(request_iterator, context, caller(context)))

    # --- resumable uploads (tus; gateway/tus.py) ---------------------------------

    def DescribeUploads(self, request, context):
        return self.tus.describe(context)

    def CreateUpload(self, request, context):
        with tus_errors():
            return self.tus.create(context, caller(context))

    def GetUpload(self, request, context):
        with tus_errors():
            return self.tus.get(request.upload_id, context, caller(context))

    def AppendUpload(self, request_iterator, context):
        with tus_errors():
            return self.tus.append(request_iterator, context, caller(context))

    def DeleteUpload(self, request, context):
        with tus_errors():
            return self.tus.delete(request.upload_id, context, caller(context))

    # --- webhooks (gateway/webhooks.py) ------------------------------------------

    def CreateWebhook(self, request, context):
        return self.webhooks.create(request.webhook, caller(context))

    def ListWebhooks(self, request, context):
        return self.webhooks.list(request, caller(context))

    def GetWebhook(self, request, context):
        return self.webhooks.get(request.webhook_id, caller(context))

    def DeleteWebhook(self, request, context):
        self.webhooks.delete(request.webhook_id, caller(context))
        return empty_pb2.Empty()

    def ListWebhookDeliveries(self, request, context):
        return self.webhooks.list_deliveries(request, caller(context))

    def RedeliverWebhookDelivery(self, request, context):
        return self.webhooks.redeliver(request.webhook_id, request.delivery_id, caller(context))

    # MongoDB errors are left to core/errors.py: UNAVAILABLE, in one place.
    def _owned_job(self, job_id: str, context) -> jobs.Job:
        _require_job_id(job_id)
        job = self.jobs.get_for_user(job_id, caller(context).user_id)
        if job is None:
            # Another user's job looks exactly like a missing one.
            raise NotFound(f"job {job_id} not found", reason=Reason.JOB_NOT_FOUND,
                           metadata={"job_id": job_id})
        return job

    def GetJob(self, request, context):
        return self._proto(self._owned_job(request.job_id, context))

    def WatchJob(self, request, context):
        first = self._owned_job(request.job_id, context)
        return (self._proto(j) for j in self.watch_hub.watch(first, context))

    def DeleteJob(self, request, context):
        _require_job_id(request.job_id)
        job = self.jobs.mark_deleted(request.job_id, caller(context).user_id)
        if job is None:
            raise NotFound(f"job {request.job_id} not found (deleted already, or never yours)",
                           reason=Reason.JOB_NOT_FOUND, metadata={"job_id": request.job_id})
        try:
            retention.delete_job(self.mongo, self.jobs, job)
        except pymongo.errors.PyMongoError as e:
            # The job is gone for its owner already; the retention sweep finishes it.
            log.warning("job %s deleted; its files will be removed by the sweep: %s", job.id, e)
        metrics.JOBS_DELETED.labels("owner").inc()
        log.info("job %s deleted by its owner (was %s)", job.id, job.state)
        return empty_pb2.Empty()

    def ListJobs(self, request, context):
        if request.page_size < 0:
            raise _invalid_page("page_size", "page_size must not be negative (0 means 50; at most 1000)")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        states = validation.state_filter(request.filter)
        before = _decode_page_token(request.page_token, request.filter)
        found = self.jobs.list_for_user(caller(context).user_id, size + 1, before, states)
        page, more = found[:size], len(found) > size
        token = _encode_page_token(page[-1], request.filter) if more else ""
        return media_pb2.ListJobsResponse(jobs=[self._proto(j) for j in page], next_page_token=token)

    def DownloadMp3(self, request, context):
        if request.job_id and request.fid and request.job_id != request.fid:
            message = "job_id and fid name the same job (fid is the seed's name); give one"
            raise InvalidArgument(message, reason=Reason.INVALID_JOB_ID, violations=[("fid", message)])
        job = self._owned_job(request.job_id or request.fid, context)
        if job.state != jobs.DONE:
            raise FailedPrecondition(
                f"job {job.id} is {job.state}; the MP3 can be downloaded once it is DONE "
                "(WatchJob tells you when)",
                reason=Reason.JOB_NOT_DONE, metadata={"job_id": job.id, "state": str(job.state)},
                # REST: 409 Conflict (the job's state, not the request, is the problem).
                trailers=[("x-http-status", "409")])
        if retention.mp3_expired(job, self.retention):
            expired = retention.expire_time(job, self.retention)
            when = f"{expired:%Y-%m-%dT%H:%M:%SZ}" if expired else "?"
            raise FailedPrecondition(
                f"the MP3 of job {job.id} expired at {when} and was deleted; "
                "upload the video again to convert it again",
                reason=Reason.MP3_EXPIRED, metadata={"job_id": job.id, "expire_time": when},
                # REST: 410 Gone (deploy/envoy.yaml's Lua filter); gRPC keeps FAILED_PRECONDITION.
                trailers=[("x-http-status", "410")])
        if request.track < 0:
            message = f"track must be 1 or more (0: the whole job), got {request.track}"
            raise InvalidArgument(message, reason=Reason.INVALID_TRACK, violations=[("track", message)])
        if not request.track and job.split:
            # A job split by chapter: all of its MP3s as one ZIP.
            files = zip_download.entries([job], folders=False)
            context.send_initial_metadata([("content-disposition", content_disposition(zip_name(job.filename)))])
            return self._chunks(zip_download.stream(self.mongo.db, files), "application/zip", context)
        wanted = [f for f in job.files if f.track == (request.track or 1)]
        if not wanted:
            raise NotFound(f"job {job.id} has no track {request.track}: its MP3s are tracks 1 to {len(job.files)}",
                           reason=Reason.TRACK_NOT_FOUND, metadata={"job_id": job.id, "track": str(request.track)})
        # Read in bounded ranges (storage/gridfs_download.py); a MongoDB error is
        # UNAVAILABLE through core/errors.py.
        stream = ChunkedDownload(self.mongo.db, MP3S_BUCKET, wanted[0].fid)
        # Envoy's transcoder passes initial metadata on as HTTP response headers.
        context.send_initial_metadata([("content-disposition", content_disposition(wanted[0].name))])
        return self._chunks(_read_all(stream), "audio/mpeg", context)

    def ZipJobs(self, request, context):
        ids = zip_download.job_ids(list(request.job_ids))
        selected = zip_download.downloadable(self.jobs, caller(context).user_id, ids, self.retention)
        files = zip_download.entries(selected, folders=True)
        context.send_initial_metadata([("content-disposition", content_disposition("video2mp3.zip"))])
        return self._chunks(zip_download.stream(self.mongo.db, files), "application/zip", context)

    def _chunks(self, pieces, content_type: str, context):
        """HttpBody messages of at most DOWNLOAD_CHUNK bytes; stops when the client goes."""
        buffered: list[bytes] = []
        size = 0
        try:
            for piece in pieces:
                buffered.append(piece)
                size += len(piece)
                if size < DOWNLOAD_CHUNK:
                    continue
                if not context.is_active():
                    return
                # Envoy takes the HTTP Content-Type from the first message.
                yield httpbody_pb2.HttpBody(content_type=content_type, data=b"".join(buffered))
                content_type, buffered, size = "", [], 0
            if buffered or content_type:
                yield httpbody_pb2.HttpBody(content_type=content_type, data=b"".join(buffered))
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # the GridFS reads in flight end now, not at garbage collection

    def DeleteMyData(self, request, context):
        user_id = caller(context).user_id
        # MongoDB down: core/errors.py answers UNAVAILABLE (the account is kept; retry).
        n_jobs, n_videos, n_mp3s = delete_user_data(self.mongo, user_id)
        # The account is about to go: look it up afresh on its next request.
        self.users.forget(user_id)
        metrics.JOBS_DELETED.labels("account").inc(n_jobs)
        log.info("deleted the data of user %s: %d jobs, %d videos, %d MP3s", user_id, n_jobs, n_videos, n_mp3s)
        return media_pb2.DeleteMyDataResponse(jobs_deleted=n_jobs, videos_deleted=n_videos, mp3s_deleted=n_mp3s)

    def GetHealth(self, request, context):
        status = self.monitor.status()
        healthy = self.monitor.healthy()
        if not healthy:
            # gRPC gets the message with OK; REST gets it with 503 (deploy/envoy.yaml's Lua filter).
            context.send_initial_metadata([("x-http-status", "503")])
        return media_pb2.GetHealthResponse(
            status="healthy" if healthy else "unhealthy",
            mongodb=status["mongodb"], rabbitmq=status["rabbitmq"], mysql=status["mysql"],
        )

    def GetUsage(self, request, context):
        if self.quotas is None:
            return media_pb2.Usage()
        return self.quotas.usage(caller(context))


def _require_job_id(job_id: str) -> None:
    if not job_id:
        raise InvalidArgument("job_id is required", reason=Reason.INVALID_JOB_ID,
                              violations=[("job_id", "job_id is required")])


def _read_all(stream):
    with stream:
        while data := stream.read(DOWNLOAD_CHUNK):
            yield data


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII `filename` for old clients, the exact name as
    RFC 8187 `filename*` (gRPC metadata values must be ASCII anyway)."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    ascii_name = "".join(c if c.isprintable() and c not in '"\\/%;' else "_" for c in ascii_name)
    if not ascii_name.removesuffix(".mp3").strip("_ "):
        ascii_name = "audio.mp3"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _filter_key(filter_text: str) -> str:
    return hashlib.sha256(filter_text.encode()).hexdigest()[:12]


def _encode_page_token(job: jobs.Job, filter_text: str) -> str:
    assert job.create_time is not None, "jobs read from the database have a create_time"
    # The filter's hash rides along: a token is only valid for the same filter (AIP-158).
    raw = f"{job.create_time.isoformat()}|{job.id}|{_filter_key(filter_text)}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_page_token(token: str, filter_text: str):
    if not token:
        return None
    try:
        t, jid, key = base64.urlsafe_b64decode(token.encode()).decode().split("|", 2)
        before = dt.datetime.fromisoformat(t), jid
    except ValueError:
        raise _invalid_page("page_token", "page_token is not valid; pass next_page_token as given") from None
    if key != _filter_key(filter_text):
        raise _invalid_page("page_token", "page_token was made for another filter; "
                            "send the same filter with it, or start again without a token")
    return before


def _invalid_page(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(message, reason=Reason.INVALID_PAGE, violations=[(field, message)])
