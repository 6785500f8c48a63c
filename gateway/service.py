"""MediaService: uploads, jobs, MP3 downloads and health."""
from __future__ import annotations

import base64
import datetime as dt
import logging
import unicodedata
from pathlib import PurePosixPath
from urllib.parse import quote

from google.api import httpbody_pb2
from video2mp3.media.v1 import media_pb2, media_pb2_grpc

from common import jobs
from common.errors import FailedPrecondition, InvalidArgument, NotFound, Reason
from common.health import DependencyMonitor
from common.mongo import Mongo
from gateway.auth import caller
from gateway.uploads import Uploads

log = logging.getLogger(__name__)

DOWNLOAD_CHUNK = 256 * 1024
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000


class MediaService(media_pb2_grpc.MediaServiceServicer):
    def __init__(self, mongo: Mongo, job_store: jobs.JobStore, uploads: Uploads,
                 monitor: DependencyMonitor):
        self.mongo = mongo
        self.jobs = job_store
        self.uploads = uploads
        self.monitor = monitor

    def UploadVideo(self, request_iterator, context):
        return jobs.to_proto(self.uploads.handle(request_iterator, context, caller(context)))

    # MongoDB errors are left to common/errors.py: UNAVAILABLE, in one place.
    def _owned_job(self, job_id: str, context) -> jobs.Job:
        if not job_id:
            raise InvalidArgument("job_id is required", reason=Reason.INVALID_JOB_ID,
                                  violations=[("job_id", "job_id is required")])
        job = self.jobs.get_for_user(job_id, caller(context).user_id)
        if job is None:
            # Another user's job looks exactly like a missing one.
            raise NotFound(f"job {job_id} not found", reason=Reason.JOB_NOT_FOUND,
                           metadata={"job_id": job_id})
        return job

    def GetJob(self, request, context):
        return jobs.to_proto(self._owned_job(request.job_id, context))

    def ListJobs(self, request, context):
        if request.page_size < 0:
            raise _invalid_page("page_size", "page_size must not be negative")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        before = _decode_page_token(request.page_token)
        found = self.jobs.list_for_user(caller(context).user_id, size + 1, before)
        page, more = found[:size], len(found) > size
        token = _encode_page_token(page[-1]) if more else ""
        return media_pb2.ListJobsResponse(jobs=[jobs.to_proto(j) for j in page], next_page_token=token)

    def DownloadMp3(self, request, context):
        if request.job_id and request.fid and request.job_id != request.fid:
            message = "job_id and fid name the same job (fid is the seed's name); give one"
            raise InvalidArgument(message, reason=Reason.INVALID_JOB_ID, violations=[("fid", message)])
        job = self._owned_job(request.job_id or request.fid, context)
        if job.state != jobs.DONE:
            raise FailedPrecondition(
                f"job {job.id} is {job.state}; the MP3 can be downloaded once it is DONE",
                reason=Reason.JOB_NOT_DONE, metadata={"job_id": job.id, "state": str(job.state)})
        stream = self.mongo.mp3s.open_download_stream(job.mp3_fid)
        # Envoy's transcoder passes initial metadata on as HTTP response headers.
        context.send_initial_metadata([("content-disposition", content_disposition(mp3_name(job.filename)))])
        return self._stream(stream, context)

    def _stream(self, stream, context):
        content_type = "audio/mpeg"
        with stream:
            while context.is_active():
                data = stream.read(DOWNLOAD_CHUNK)
                if not data:
                    return
                # Envoy takes the HTTP Content-Type from the first message.
                yield httpbody_pb2.HttpBody(content_type=content_type, data=data)
                content_type = ""

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


def mp3_name(video_name: str) -> str:
    """holiday.mp4 -> holiday.mp3 (the name the MP3 is offered under)."""
    return f"{PurePosixPath(video_name).stem or 'audio'}.mp3"


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII `filename` for old clients, the exact name as
    RFC 8187 `filename*` (gRPC metadata values must be ASCII anyway)."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    ascii_name = "".join(c if c.isprintable() and c not in '"\\/%;' else "_" for c in ascii_name)
    if not ascii_name.removesuffix(".mp3").strip("_ "):
        ascii_name = "audio.mp3"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _encode_page_token(job: jobs.Job) -> str:
    assert job.create_time is not None, "jobs read from the database have a create_time"
    raw = f"{job.create_time.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_page_token(token: str):
    if not token:
        return None
    try:
        t, jid = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        return dt.datetime.fromisoformat(t), jid
    except ValueError:
        raise _invalid_page("page_token", "page_token is not valid; pass next_page_token as given") from None


def _invalid_page(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(message, reason=Reason.INVALID_PAGE, violations=[(field, message)])
