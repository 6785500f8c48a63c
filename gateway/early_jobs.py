"""Convert while uploading: the job of a streamable upload exists from its first bytes.

So does the job of an MP4 with its index at the end (`spool`): a converter
cannot read that before its end, but one with nothing else to do copies it to
local disk as it arrives (converter/spool.py).

gateway/uploads.py asks gateway/container_sniff.py about the first bytes; for
a streamable file it calls start(), which records the job HIDDEN
(`uploading: true`, domain/jobs.py) and publishes its task at once, so a
converter reads the video while it arrives (storage/gridfs_growing.py). Then:

* the upload ends well: the GridFS file is closed (its files document
  exists) and finish() makes the job visible, as it is at that moment
  (QUEUED, PROCESSING with progress, or DONE); the upload answers with it;
* the upload fails (cancel, size limit, storage full, any error): abort()
  deletes the job exactly like DeleteJob, whose converter notices within
  about half a second and deletes its MP3; the upload's chunks are aborted
  as for any upload;
* the gateway dies: the heartbeat below stops, the converter gives the job up
  (JobStore.abandon_upload) and gateway/janitor.py deletes it with its files.

The heartbeat is one thread per gateway that refreshes `upload_touched` of
every upload it is receiving every jobs.UPLOAD_TOUCH_S, whether bytes arrive or
not: a client that pauses must not look like a dead gateway.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

import pymongo.errors
from bson import ObjectId

from video2mp3.domain import jobs, retention
from video2mp3.storage.mongo import Mongo

log = logging.getLogger(__name__)


class Heartbeat:
    """Refreshes the hidden jobs of the uploads in progress here, one write for
    all; gateway/__main__.py calls beat() every jobs.UPLOAD_TOUCH_S."""

    def __init__(self, store: jobs.JobStore):
        self.store = store
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, job_id: str) -> None:
        with self._lock:
            self._ids.add(job_id)

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._ids.discard(job_id)

    def beat(self) -> None:
        with self._lock:
            ids = list(self._ids)
        if ids:
            self.store.touch_uploads(ids)


class EarlyJobs:
    def __init__(self, mongo: Mongo, store: jobs.JobStore, publish: Callable[[jobs.Job], bool],
                 heartbeat: Heartbeat):
        self.mongo, self.store, self.publish, self.heartbeat = mongo, store, publish, heartbeat

    def start(self, *, job_id: str, user_id: str, user_email: str, filename: str,
              video_fid: ObjectId, options, request_id: str, trace: dict,
              spool: bool = False) -> jobs.Job | None:
        """Record the hidden job and publish its task. None if this caller's
        request_id has a job already: the upload then goes on the usual way
        and its end decides (gateway/uploads.py)."""
        def create() -> jobs.Job:
            return self.store.create(job_id=job_id, user_id=user_id, user_email=user_email,
                                     filename=filename, video_fid=video_fid, video_size=0,
                                     options=options, request_id=request_id, trace=trace,
                                     uploading=True, spool=spool)
        try:
            job = self.create(create, user_id, request_id)
        except pymongo.errors.DuplicateKeyError:
            return None
        self.heartbeat.add(job.id)
        log.info("job %s created while %s is uploading (%s)", job.id, filename,
                 "index at the end: to be spooled" if spool else "streamable",
                 extra={"job_id": job.id, "step": "streaming"})
        self.publish(job)  # unconfirmed: published again by finish()
        return job

    def create(self, create: Callable[[], jobs.Job], user_id: str, request_id: str) -> jobs.Job:
        """create() a job; if a dead gateway's hidden job holds its request_id,
        delete that one and create() once more. DuplicateKeyError: a live job
        has the request_id."""
        try:
            return create()
        except pymongo.errors.DuplicateKeyError:
            if not (request_id and self.free_request_id(user_id, request_id)):
                raise
            return create()

    def free_request_id(self, user_id: str, request_id: str) -> bool:
        """Delete the hidden job of a dead gateway that still holds this
        request_id (the retry took its reservation over: gateway/request_ids.py).
        True if there was one."""
        cutoff = jobs.now() - dt.timedelta(seconds=jobs.UPLOAD_STALE_S)
        stale = self.store.claim_stale_upload(cutoff, user_id, request_id)
        if stale is None:
            return False
        retention.delete_job(self.mongo, self.store, stale)
        log.warning("job %s: deleted, its upload's gateway died; request %s is retried",
                    stale.id, request_id, extra={"job_id": stale.id})
        return True

    def finish(self, job: jobs.Job, size: int, filename: str,
               declared_seconds: float | None = None) -> jobs.Job | None:
        """The upload's file is complete: the job becomes visible. None if it was
        deleted meanwhile (its account, or the janitor after a long outage)."""
        try:
            done = self.store.finish_upload(job.id, size, filename, declared_seconds)
        finally:
            self.heartbeat.discard(job.id)
        if done is not None and not done.published:
            # Its first publish was not confirmed, or a converter gave it up
            # while this gateway could not beat (JobStore.abandon_upload).
            self.publish(done)
        return done

    def abort(self, job: jobs.Job) -> None:
        """Delete the hidden job like DeleteJob; best effort (if MongoDB is down,
        the missing heartbeat makes it the janitor's)."""
        self.heartbeat.discard(job.id)
        try:
            marked = self.store.mark_deleted(job.id)
            if marked is not None:
                retention.delete_job(self.mongo, self.store, marked)
        except pymongo.errors.PyMongoError as e:
            log.warning("job %s: upload failed and its job could not be deleted now "
                        "(the janitor will): %s", job.id, e)


def delete_stale(mongo: Mongo, store: jobs.JobStore, touched_before: dt.datetime,
                 limit: int = 100) -> int:
    """Delete hidden jobs whose gateway died mid-upload, with their video
    chunks and MP3s (gateway/janitor.py). A job whose upload ended is never
    touched: it is not `uploading` any more, nor one with a recent heartbeat."""
    touched_before = min(touched_before, jobs.now() - dt.timedelta(seconds=jobs.UPLOAD_STALE_S))
    n = 0
    for _ in range(limit):
        job = store.claim_stale_upload(touched_before)
        if job is None:
            break
        retention.delete_job(mongo, store, job)
        log.info("job %s: its upload's gateway died; deleted with its files", job.id,
                 extra={"job_id": job.id})
        n += 1
    return n
