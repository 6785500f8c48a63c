"""UploadVideo: stream the client's chunks straight into GridFS, then record
the job and publish it.

Nothing is half-kept: any failure before the job is recorded (bad options,
empty body, size limit, client cancel, storage error) aborts the GridFS upload,
which deletes its chunks; chunks a killed gateway could not delete are removed
later by gateway/janitor.py. Memory holds one GridFS chunk at a time
(common/gridfs_upload.py).
"""
from __future__ import annotations

import itertools
import logging
import threading

import grpc
import pymongo.errors
from bson import ObjectId

from common import jobs
from common.mongo import VIDEOS_BUCKET, Mongo
from common.queue import PublishError, Publisher
from common.tokens import Caller
from gateway import form_upload, validation
from common.gridfs_download import delete_file
from common.gridfs_upload import ChunkedUpload
from common.storage_space import StorageFull, StorageSpace

log = logging.getLogger(__name__)


class Uploads:
    def __init__(self, mongo: Mongo, job_store: jobs.JobStore, publisher: Publisher,
                 max_bytes: int, max_concurrent: int, space: StorageSpace | None = None):
        self.mongo = mongo
        self.jobs = job_store
        self.publisher = publisher
        self.max_bytes = max_bytes
        self.space = space
        self._slots = threading.BoundedSemaphore(max_concurrent)

    def handle(self, requests, context, caller: Caller) -> dict:
        """Returns the created job document, or aborts the RPC with a status."""
        if not self._slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "too many uploads in progress; retry in a few seconds")
        try:
            return self._handle(requests, context, caller)
        finally:
            self._slots.release()

    def _handle(self, requests, context, caller: Caller) -> dict:
        first = next(requests, None)
        if first is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the upload is empty: send the video's bytes")
        try:
            options = validation.conversion_options(first)
            filename = validation.filename(first.filename)
        except validation.InvalidOptions as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

        try:
            stream = ChunkedUpload(
                self.mongo.db, VIDEOS_BUCKET, filename,
                metadata={"user_id": caller.user_id,
                          "content_type": first.body.content_type or "application/octet-stream"},
                before_store=self.space.guard() if self.space else None,
            )
        except StorageFull as e:
            _storage_full(context, e)
        except pymongo.errors.PyMongoError as e:
            log.warning("cannot open GridFS upload: %s", e)
            context.abort(grpc.StatusCode.UNAVAILABLE, "video storage is unavailable; try again shortly")

        messages = itertools.chain([first], requests)
        if form_upload.is_form(first.body.content_type):
            try:
                body = form_upload.FormFile(first.body.content_type, messages)
            except form_upload.MalformedForm as e:
                self._abort_quietly(stream)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        else:
            body = (m.body.data for m in messages)
        size = self._write_all(stream, body, context, named_by_query=bool(first.filename))
        filename = stream.filename
        video_fid: ObjectId = stream._id
        job_id = jobs.new_job_id()
        try:
            doc = self.jobs.create(job_id=job_id, user_id=caller.user_id, user_email=caller.email,
                                   filename=filename, video_fid=video_fid, video_size=size,
                                   options=options)
        except pymongo.errors.PyMongoError as e:
            log.warning("cannot record job for %s: %s", video_fid, e)
            self._delete_quietly(video_fid)
            context.abort(grpc.StatusCode.UNAVAILABLE, "job storage is unavailable; try again shortly")

        self.publish(doc)
        log.info("job %s queued: %s (%d bytes) for %s", job_id, filename, size, caller.email)
        return doc

    def _write_all(self, stream, body, context, named_by_query: bool) -> int:
        """Writes every chunk of `body` (an iterable of bytes); returns the size.
        Aborts the upload and the RPC on any failure."""
        size = 0
        try:
            for data in body:
                size += len(data)
                if size > self.max_bytes:
                    # Envoy's REST side turns this into 413 (deploy/envoy.yaml's Lua filter).
                    context.set_trailing_metadata((("x-http-status", "413"),))
                    raise _Reject(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"the upload is larger than the {self.max_bytes}-byte limit")
                if data:
                    stream.write(data)
            if _reset_after_end(context):
                raise _Reject(grpc.StatusCode.CANCELLED, "the client cancelled the upload")
            if size == 0:
                raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, "the upload is empty: send the video's bytes")
            if getattr(body, "filename", None) and not named_by_query:
                stream.filename = validation.filename(body.filename)  # a form's own file name
            stream.close()
            return size
        except _Reject as r:
            self._abort_quietly(stream)
            context.abort(r.code, r.message)
        except StorageFull as e:
            self._abort_quietly(stream)
            _storage_full(context, e)
        except (form_upload.MalformedForm, validation.InvalidOptions) as e:
            self._abort_quietly(stream)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except pymongo.errors.PyMongoError as e:
            log.warning("GridFS upload failed: %s", e)
            self._abort_quietly(stream)
            context.abort(grpc.StatusCode.UNAVAILABLE, "video storage is unavailable; try again shortly")
        except BaseException:
            # Client went away mid-stream (grpc raises from the request iterator),
            # or we are shutting down: keep nothing.
            self._abort_quietly(stream)
            raise

    def publish(self, doc: dict) -> bool:
        """Publish a recorded job; on failure it stays unpublished for the outbox to retry."""
        try:
            self.publisher.publish(jobs.task_for(doc))
        except PublishError as e:
            log.warning("job %s not published yet (%s); the outbox will retry", doc["_id"], e)
            return False
        try:
            self.jobs.mark_published(doc["_id"])
        except pymongo.errors.PyMongoError as e:
            # Published but not marked: the outbox may publish again; the
            # converter ignores tasks whose job is already final.
            log.warning("job %s published but not marked: %s", doc["_id"], e)
        return True

    def _abort_quietly(self, stream) -> None:
        try:
            stream.abort()
        except Exception as e:  # storage down too: the janitor of orphan chunks finds it later
            log.warning("could not abort GridFS upload %s: %s", stream._id, e)

    def _delete_quietly(self, fid) -> None:
        try:
            delete_file(self.mongo.db, VIDEOS_BUCKET, fid)
        except Exception as e:
            log.warning("could not delete video %s: %s", fid, e)


# grpcio's sync server ends the request iterator normally when the stream is
# *reset* (a gRPC client cancelling, or Envoy when a REST client disconnects
# mid-body), and marks the RPC cancelled a moment later, when it has handled
# the reset's second event: measured here at about 0.1 ms, this waits up to
# 1000 times that before a stream end is taken for the client's own.
END_OF_STREAM_SETTLE_S = 0.1


def _reset_after_end(context) -> bool:
    """True if the stream that just ended was in fact reset by the client."""
    ended = threading.Event()
    if not context.add_callback(ended.set):  # the RPC has terminated already
        return True
    return ended.wait(END_OF_STREAM_SETTLE_S) or not context.is_active()


def _storage_full(context, e: StorageFull):
    log.warning("upload refused: %s", e)
    context.set_trailing_metadata((("x-http-status", "507"),))  # REST: 507 Insufficient Storage
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))


class _Reject(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        self.code, self.message = code, message
