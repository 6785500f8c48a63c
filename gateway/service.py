"""MediaService: uploads, jobs, MP3 downloads and health."""
from __future__ import annotations

import base64
import datetime as dt
import logging

import grpc
import pymongo.errors
from google.api import httpbody_pb2
from video2mp3.media.v1 import media_pb2, media_pb2_grpc

from common import jobs
from common.health import DependencyMonitor
from common.mongo import Mongo
from gateway.auth import caller
from gateway.uploads import Uploads
from gateway.user_check import UserCheck
from gateway.user_data import delete_user_data

log = logging.getLogger(__name__)

DOWNLOAD_CHUNK = 256 * 1024
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000


def _unavailable(context, what: str, e: Exception):
    log.warning("%s unavailable: %s", what, e)
    context.abort(grpc.StatusCode.UNAVAILABLE, f"{what} is unavailable; try again shortly")


class MediaService(media_pb2_grpc.MediaServiceServicer):
    def __init__(self, mongo: Mongo, job_store: jobs.JobStore, uploads: Uploads,
                 monitor: DependencyMonitor, users: UserCheck):
        self.mongo = mongo
        self.users = users
        self.jobs = job_store
        self.uploads = uploads
        self.monitor = monitor

    def UploadVideo(self, request_iterator, context):
        return jobs.to_proto(self.uploads.handle(request_iterator, context, caller(context)))

    def _owned_job(self, job_id: str, context) -> dict:
        if not job_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id is required")
        try:
            doc = self.jobs.get_for_user(job_id, caller(context).user_id)
        except pymongo.errors.PyMongoError as e:
            _unavailable(context, "job storage", e)
        if doc is None:
            # Another user's job looks exactly like a missing one.
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id} not found")
        return doc

    def GetJob(self, request, context):
        return jobs.to_proto(self._owned_job(request.job_id, context))

    def ListJobs(self, request, context):
        if request.page_size < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must not be negative")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        before = _decode_page_token(request.page_token, context)
        try:
            docs = self.jobs.list_for_user(caller(context).user_id, size + 1, before)
        except pymongo.errors.PyMongoError as e:
            _unavailable(context, "job storage", e)
        page, more = docs[:size], len(docs) > size
        token = _encode_page_token(page[-1]) if more else ""
        return media_pb2.ListJobsResponse(jobs=[jobs.to_proto(d) for d in page], next_page_token=token)

    def DownloadMp3(self, request, context):
        doc = self._owned_job(request.job_id, context)
        if doc["state"] != jobs.DONE:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"job {doc['_id']} is {doc['state']}; the MP3 can be downloaded once it is DONE")
        try:
            stream = self.mongo.mp3s.open_download_stream(doc["mp3_fid"])
        except pymongo.errors.PyMongoError as e:
            _unavailable(context, "MP3 storage", e)
        return self._stream(stream, context)

    def _stream(self, stream, context):
        content_type = "audio/mpeg"
        with stream:
            while context.is_active():
                try:
                    data = stream.read(DOWNLOAD_CHUNK)
                except pymongo.errors.PyMongoError as e:
                    _unavailable(context, "MP3 storage", e)
                if not data:
                    return
                # Envoy takes the HTTP Content-Type from the first message.
                yield httpbody_pb2.HttpBody(content_type=content_type, data=data)
                content_type = ""

    def DeleteMyData(self, request, context):
        user_id = caller(context).user_id
        try:
            n_jobs, n_videos, n_mp3s = delete_user_data(self.mongo, user_id)
        except pymongo.errors.PyMongoError as e:
            _unavailable(context, "storage", e)
        # The account is about to go: look it up afresh on its next request.
        self.users.forget(user_id)
        log.info("deleted the data of user %s: %d jobs, %d videos, %d MP3s", user_id, n_jobs, n_videos, n_mp3s)
        return media_pb2.DeleteMyDataResponse(jobs_deleted=n_jobs, videos_deleted=n_videos, mp3s_deleted=n_mp3s)

    def GetHealth(self, request, context):
        status = self.monitor.status()
        return media_pb2.GetHealthResponse(
            status="healthy" if self.monitor.healthy() else "unhealthy",
            mongodb=status["mongodb"], rabbitmq=status["rabbitmq"], mysql=status["mysql"],
        )


def _encode_page_token(doc: dict) -> str:
    raw = f"{doc['create_time'].isoformat()}|{doc['_id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_page_token(token: str, context):
    if not token:
        return None
    try:
        t, jid = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        return dt.datetime.fromisoformat(t), jid
    except ValueError:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not valid; pass next_page_token as given")
