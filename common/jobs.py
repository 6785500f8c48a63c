"""The job document in MongoDB: the one place that reads and writes it.

The gateway creates jobs (QUEUED) and reads them for their owner; the
converter moves them through PROCESSING to DONE or FAILED. Every state change
is a conditional update, so a job that is DONE can never be redone.

Document: {_id: job id, user_id, user_email, filename, state, progress, error,
video_fid, video_size, mp3_fid, mp3_size, options, attempts, published,
pending_mp3_fids, current_mp3_fid, lease_until, create_time, update_time,
complete_time}.
"""
from __future__ import annotations

import datetime as dt
import uuid

import pymongo
from bson import ObjectId
from google.protobuf import json_format, timestamp_pb2
from video2mp3.media.v1 import media_pb2, queue_pb2

QUEUED, PROCESSING, DONE, FAILED = "QUEUED", "PROCESSING", "DONE", "FAILED"
FINAL_STATES = (DONE, FAILED)
_STATE_TO_PROTO = {
    QUEUED: media_pb2.JOB_STATE_QUEUED,
    PROCESSING: media_pb2.JOB_STATE_PROCESSING,
    DONE: media_pb2.JOB_STATE_DONE,
    FAILED: media_pb2.JOB_STATE_FAILED,
}


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    def __init__(self, collection: pymongo.collection.Collection):
        self.c = collection

    def ensure_indexes(self) -> None:
        self.c.create_index([("user_id", 1), ("create_time", -1)])
        self.c.create_index([("published", 1), ("state", 1)])

    # --- gateway side -------------------------------------------------------

    def create(self, *, job_id: str, user_id: str, user_email: str, filename: str,
               video_fid: ObjectId, video_size: int,
               options: media_pb2.ConversionOptions) -> dict:
        t = now()
        doc = {
            "_id": job_id,
            "user_id": user_id,
            "user_email": user_email,
            "filename": filename,
            "state": QUEUED,
            "progress": 0,
            "error": "",
            "video_fid": video_fid,
            "video_size": video_size,
            "mp3_fid": None,
            "mp3_size": 0,
            "options": json_format.MessageToDict(options, preserving_proto_field_name=True),
            "attempts": 0,
            # Outbox flag: false until RabbitMQ confirmed the task message.
            "published": False,
            "pending_mp3_fids": [],
            "create_time": t,
            "update_time": t,
            "complete_time": None,
        }
        self.c.insert_one(doc)
        return doc

    def mark_published(self, job_id: str) -> None:
        self.c.update_one({"_id": job_id}, {"$set": {"published": True}})

    def unpublished(self, older_than: dt.datetime, limit: int = 100) -> list[dict]:
        return list(self.c.find(
            {"published": False, "state": QUEUED, "create_time": {"$lt": older_than}},
            limit=limit,
        ))

    def get_for_user(self, job_id: str, user_id: str) -> dict | None:
        return self.c.find_one({"_id": job_id, "user_id": user_id})

    def list_for_user(self, user_id: str, limit: int, before: tuple | None) -> list[dict]:
        """Newest first; `before` is the (create_time, _id) of the last job of the previous page."""
        query: dict = {"user_id": user_id}
        if before:
            t, jid = before
            query["$or"] = [{"create_time": {"$lt": t}},
                            {"create_time": t, "_id": {"$lt": jid}}]
        cursor = self.c.find(query).sort([("create_time", -1), ("_id", -1)]).limit(limit)
        return list(cursor)

    # --- converter side -----------------------------------------------------

    def get(self, job_id: str) -> dict | None:
        return self.c.find_one({"_id": job_id})

    def start_attempt(self, job_id: str, mp3_fid: ObjectId, lease_s: float) -> dict | None:
        """Take the job for one conversion attempt writing MP3 `mp3_fid`.

        Succeeds unless the job is final or another worker holds a live lease
        (it renews the lease as it makes progress). The attempt's MP3 id is
        recorded *before* anything is written, so a crash leaves a name to clean
        up. Returns the job as it was before, or None.
        """
        t = now()
        return self.c.find_one_and_update(
            {"_id": job_id, "state": {"$nin": list(FINAL_STATES)},
             "$or": [{"state": {"$ne": PROCESSING}}, {"lease_until": {"$lt": t}},
                     {"lease_until": None}]},
            {"$set": {"state": PROCESSING, "progress": 0, "update_time": t,
                      "current_mp3_fid": mp3_fid, "lease_until": t + dt.timedelta(seconds=lease_s)},
             "$inc": {"attempts": 1},
             "$push": {"pending_mp3_fids": mp3_fid}},
            return_document=pymongo.ReturnDocument.BEFORE,
        )

    def renew(self, job_id: str, mp3_fid: ObjectId, percent: int, lease_s: float) -> bool:
        """Record progress and extend the lease; False if this attempt lost the job."""
        t = now()
        r = self.c.update_one(
            {"_id": job_id, "state": PROCESSING, "current_mp3_fid": mp3_fid},
            {"$set": {"progress": percent, "update_time": t,
                      "lease_until": t + dt.timedelta(seconds=lease_s)}})
        return r.matched_count == 1

    def finish_done(self, job_id: str, mp3_fid: ObjectId, mp3_size: int) -> bool:
        """True if this attempt's MP3 became the job's; False if the job is final
        already or another attempt took it over."""
        t = now()
        r = self.c.update_one(
            {"_id": job_id, "state": PROCESSING, "current_mp3_fid": mp3_fid},
            {"$set": {"state": DONE, "progress": 100, "mp3_fid": mp3_fid,
                      "mp3_size": mp3_size, "error": "", "update_time": t, "complete_time": t,
                      "lease_until": None},
             "$pull": {"pending_mp3_fids": mp3_fid}},
        )
        return r.modified_count == 1

    def release(self, job_id: str, mp3_fid: ObjectId) -> None:
        """Give the job back (shutdown or a retryable error) so the next delivery need not wait for the lease."""
        self.c.update_one({"_id": job_id, "state": PROCESSING, "current_mp3_fid": mp3_fid},
                          {"$set": {"state": QUEUED, "lease_until": None, "update_time": now()}})

    def finish_failed(self, job_id: str, reason: str) -> bool:
        t = now()
        r = self.c.update_one(
            {"_id": job_id, "state": {"$nin": list(FINAL_STATES)}},
            {"$set": {"state": FAILED, "error": reason, "update_time": t, "complete_time": t,
                      "lease_until": None}},
        )
        return r.modified_count == 1

    def forget_pending(self, job_id: str, mp3_fids: list[ObjectId]) -> None:
        self.c.update_one({"_id": job_id}, {"$pullAll": {"pending_mp3_fids": mp3_fids}})


def _ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:  # pymongo returns naive UTC datetimes by default
        value = value.replace(tzinfo=dt.timezone.utc)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def to_proto(doc: dict) -> media_pb2.Job:
    job = media_pb2.Job(
        job_id=doc["_id"],
        state=_STATE_TO_PROTO[doc["state"]],
        progress=int(doc.get("progress", 0)),
        error=doc.get("error", ""),
        filename=doc.get("filename", ""),
        video_size_bytes=int(doc.get("video_size", 0)),
        mp3_size_bytes=int(doc.get("mp3_size", 0)),
        options=json_format.ParseDict(doc.get("options", {}), media_pb2.ConversionOptions()),
    )
    for field in ("create_time", "update_time", "complete_time"):
        ts = _ts(doc.get(field))
        if ts is not None:
            getattr(job, field).CopyFrom(ts)
    return job


def task_for(doc: dict) -> queue_pb2.ConversionTask:
    """The queue message that asks a converter to convert this job."""
    task = queue_pb2.ConversionTask(
        video_fid=str(doc["video_fid"]), user_email=doc["user_email"], job_id=doc["_id"])
    task.options.CopyFrom(json_format.ParseDict(doc.get("options", {}), media_pb2.ConversionOptions()))
    return task
