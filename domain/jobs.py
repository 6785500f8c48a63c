"""The job document in MongoDB: the one place that reads and writes it.

The gateway creates jobs (QUEUED) and reads them for their owner; the
converter moves them through PROCESSING to DONE or FAILED. Every state change
is a conditional update, so a job that is DONE can never be redone.

Document: {_id: job id, user_id, user_email, filename, state, progress, error,
video_fid, video_size, mp3_fid, mp3_size, mp3_files, options, attempts, published,
pending_mp3_fids, current_mp3_fid, lease_until, create_time, update_time,
complete_time, request_id, mp3_expired, deleted, sweep_owner, sweep_until,
trace, uploading, upload_touched, tus, spool, notify, pending_events, audio_seconds,
declared_seconds, lane, express_refused}: `audio_seconds` is the MP3's length once DONE,
`declared_seconds` what the upload's container declared (gateway/quotas.py counts it
for jobs not converted yet).

`published` and `lane` are the fair dispatcher's (gateway/outbox.py): a job is
published to RabbitMQ when its user's turn comes, on the normal lane or the
express lane (`lane`); an express conversion that turns out long gives its job
back unpublished with `express_refused` (leave_express), for the normal lane.

A streamable upload's job is created as its first bytes arrive, so that it is
converted while the rest arrives (gateway/early_jobs.py): until the upload
ends it carries `uploading: true` and an `upload_touched` heartbeat, and is
HIDDEN from its owner (VISIBLE below) exactly like a job that does not exist.
Its upload's end clears both, and from then on it is a normal job. So is
the job of an MP4 with its index at the end, with `spool: true`: a converter
copies it to local disk as it arrives and may hand it back (yield_upload)
for the upload's end to publish again (converter/spool.py).

A resumable (tus) upload's job is created hidden when the upload is created
(gateway/tus.py) and also carries `tus: true`: its client may pause for hours
between two requests, so no heartbeat proves it alive and the janitor of dead
streamed uploads leaves it alone; it ends complete (finish_upload) or expired
or terminated (deleted like any job).

Events for webhooks (gateway/webhook_dispatch.py) are recorded by the state
changes themselves: every update that moves a job to PROCESSING, DONE or
FAILED also adds the event (`job.processing`, ...) to `pending_events` and
sets `notify: true`, in the same conditional update, so an event is never
lost between a state change and its recording, whoever dies; the gateways turn
them into deliveries, then remove the events they handled (and the flag once
none is left).

`request_id` is the client's idempotency key (CreateJob retries get the same
job); `trace` is something else: the upload's x-request-id and trace context
(telemetry/tracing.carrier), so a job the outbox publishes later keeps them.

Deleting is two steps (DeleteJob, or the retention sweep): the document is
marked `deleted` first, which hides it from every reader and makes the
converter's next lease renewal fail (so a conversion in progress stops), then
its files go, then the document. A sweep finishes what a dead gateway left.

Readers get a `Job` (a snapshot of the document); the document itself keeps
its format, states stored as their names.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from typing import Any

import pymongo
from bson import ObjectId
from google.protobuf import json_format, timestamp_pb2

from video2mp3.domain.mp3_files import Mp3File, single_name
from video2mp3.media.v1 import media_pb2, queue_pb2


class State(enum.StrEnum):
    """Stored (and compared, and logged) as the plain name."""
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    DONE = "DONE"
    FAILED = "FAILED"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


QUEUED, PROCESSING, DONE, FAILED = State.QUEUED, State.PROCESSING, State.DONE, State.FAILED
FINAL_STATES = (DONE, FAILED)
STATE_TO_PROTO = {
    QUEUED: media_pb2.JOB_STATE_QUEUED,
    PROCESSING: media_pb2.JOB_STATE_PROCESSING,
    DONE: media_pb2.JOB_STATE_DONE,
    FAILED: media_pb2.JOB_STATE_FAILED,
}


def _options(value) -> media_pb2.ConversionOptions:
    return json_format.ParseDict(value or {}, media_pb2.ConversionOptions())


@dataclasses.dataclass(frozen=True)
class Job:
    """One job document as read; fields missing from older documents get defaults."""
    id: str
    user_id: str
    user_email: str
    filename: str
    state: State
    progress: int = 0
    error: str = ""
    video_fid: Any = None  # kept raw: a bad one fails its conversion, not every read
    video_size: int = 0
    mp3_fid: ObjectId | None = None
    mp3_size: int = 0
    options: media_pb2.ConversionOptions = dataclasses.field(default_factory=media_pb2.ConversionOptions)
    attempts: int = 0
    published: bool = False
    pending_mp3_fids: tuple[ObjectId, ...] = ()
    current_mp3_fid: ObjectId | None = None
    lease_until: dt.datetime | None = None
    create_time: dt.datetime | None = None
    update_time: dt.datetime | None = None
    complete_time: dt.datetime | None = None
    request_id: str = ""
    mp3_expired: bool = False
    deleted: bool = False
    trace: dict = dataclasses.field(default_factory=dict)
    uploading: bool = False
    upload_touched: dt.datetime | None = None
    tus: bool = False
    spool: bool = False             # uploading, an MP4 with its index at the end (converter/spool.py)
    # Recorded when DONE (domain/mp3_files.py); empty for jobs done before that: see `files`.
    mp3_files: tuple[Mp3File, ...] = ()
    lane: str = ""                  # where it was published: "normal", "express" ("": not yet, or older)
    express_refused: bool = False   # it left the express lane: too long for it

    @classmethod
    def from_doc(cls, doc: dict) -> Job:
        return cls(
            id=doc["_id"],
            user_id=doc.get("user_id") or "",
            user_email=doc.get("user_email") or "",
            filename=doc.get("filename") or "",
            state=State(doc["state"]),
            progress=int(doc.get("progress") or 0),
            error=doc.get("error") or "",
            video_fid=doc.get("video_fid"),
            video_size=int(doc.get("video_size") or 0),
            mp3_fid=doc.get("mp3_fid"),
            mp3_size=int(doc.get("mp3_size") or 0),
            options=_options(doc.get("options")),
            attempts=int(doc.get("attempts") or 0),
            published=bool(doc.get("published", False)),
            pending_mp3_fids=tuple(doc.get("pending_mp3_fids") or ()),
            current_mp3_fid=doc.get("current_mp3_fid"),
            lease_until=doc.get("lease_until"),
            create_time=doc.get("create_time"),
            update_time=doc.get("update_time"),
            complete_time=doc.get("complete_time"),
            request_id=doc.get("request_id") or "",
            mp3_expired=bool(doc.get("mp3_expired", False)),
            deleted=bool(doc.get("deleted", False)),
            trace=dict(doc.get("trace") or {}),
            uploading=bool(doc.get("uploading", False)),
            upload_touched=doc.get("upload_touched"),
            tus=bool(doc.get("tus", False)),
            spool=bool(doc.get("spool", False)),
            mp3_files=tuple(Mp3File.from_doc(d) for d in doc.get("mp3_files") or ()),
            lane=doc.get("lane") or "",
            express_refused=bool(doc.get("express_refused", False)),
        )

    @property
    def files(self) -> tuple[Mp3File, ...]:
        """The MP3s to serve: those recorded, or a job's one `mp3_fid`; none
        unless DONE with its MP3s kept."""
        if self.state != DONE or self.mp3_expired:
            return ()
        if self.mp3_files:
            return self.mp3_files
        if self.mp3_fid is None:
            return ()
        return (Mp3File(fid=self.mp3_fid, name=single_name(self.filename), size=self.mp3_size),)

    @property
    def split(self) -> bool:
        """Whether the job made one MP3 per chapter (more than one file)."""
        return len(self.mp3_files) > 1

    @property
    def changes(self) -> tuple:
        """What a watcher is told about: a new value here is a new message."""
        return self.state, self.progress, self.error, self.mp3_expired


def _job(doc: dict | None) -> Job | None:
    return None if doc is None else Job.from_doc(doc)


# Readers never see a job being deleted.
LIVE: dict = {"deleted": None}
# Its owner never sees a job whose upload is still in progress either.
VISIBLE: dict = {**LIVE, "uploading": None}
# The two lanes a job is published on (gateway/outbox.py, domain/queue.express_queue).
NORMAL_LANE, EXPRESS_LANE = "normal", "express"
# Set with every state change that makes a webhook event (see the module doc).
NOTIFY: dict = {"notify": True}


def _event(name: str) -> dict:
    return {"$addToSet": {"pending_events": name}}


# A hidden job's heartbeat (gateway/early_jobs.py) beats this often; older
# than UPLOAD_STALE_S (a few missed beats: a MongoDB hiccup is no death), its
# gateway is taken for dead by the converter.
UPLOAD_TOUCH_S = 1.0
UPLOAD_STALE_S = 6.0


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    def __init__(self, collection: pymongo.collection.Collection, queue: str | None = None):
        """`queue`: the task queue this store's jobs are published to (a
        gateway's QUEUE_NAME). Its jobs are tagged with it, and the outbox's
        queries see only those (and untagged ones), so that meshes sharing a
        database but not a queue (tests, a staging copy) never publish each
        other's jobs."""
        self.c = collection
        self.queue = queue
        self._mine = {"queue": {"$in": [queue, None]}} if queue else {}

    def ensure_indexes(self) -> None:
        self.c.create_index([("user_id", 1), ("create_time", -1)])
        self.c.create_index([("published", 1), ("state", 1)])
        self.c.create_index([("user_id", 1), ("published", 1), ("state", 1)])
        self.c.create_index([("state", 1), ("complete_time", 1)])
        # AIP-155: one job per (caller, request_id), whatever races happen.
        self.c.create_index([("user_id", 1), ("request_id", 1)], unique=True,
                            partialFilterExpression={"request_id": {"$type": "string"}})
        # Jobs with an event not turned into webhook deliveries yet: few at any time.
        self.c.create_index([("notify", 1)], partialFilterExpression={"notify": True})

    # --- gateway side -------------------------------------------------------

    def create(self, *, job_id: str, user_id: str, user_email: str, filename: str,
               video_fid: ObjectId, video_size: int,
               options: media_pb2.ConversionOptions, request_id: str = "",
               trace: dict | None = None, uploading: bool = False, tus: bool = False,
               spool: bool = False, declared_seconds: float | None = None) -> Job:
        """Raises pymongo.errors.DuplicateKeyError if this caller has a job with `request_id`.
        `uploading`: a hidden job whose upload goes on (see the module doc);
        `tus`: and that upload is resumable (gateway/tus.py); `spool`: and
        its file can only be read once complete (converter/spool.py)."""
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
            "trace": dict(trace or {}),
        }
        if request_id:
            doc["request_id"] = request_id
        if uploading:
            doc.update(uploading=True, upload_touched=t)
        if tus:
            doc.update(tus=True)
        if uploading and spool:
            doc.update(spool=True)
        if declared_seconds:
            doc.update(declared_seconds=float(declared_seconds))
        if self.queue:
            doc.update(queue=self.queue)
        self.c.insert_one(doc)
        return Job.from_doc(doc)

    def mark_published(self, job_id: str, lane: str = NORMAL_LANE) -> None:
        self.c.update_one({"_id": job_id}, {"$set": {"published": True, "lane": lane}})

    # --- the fair dispatcher (gateway/outbox.py) --------------------------------

    def in_flight(self, user_id: str) -> tuple[int, int]:
        """(this user's jobs published and not final, of which waiting in the
        normal lane: QUEUED, not taken by a worker yet). Hidden jobs count."""
        base = {"user_id": user_id, "published": True, **LIVE}
        busy = self.c.count_documents({**base, "state": {"$in": [QUEUED, PROCESSING]}})
        waiting = self.c.count_documents({**base, "state": QUEUED, "lane": {"$ne": EXPRESS_LANE}}) if busy else 0
        return busy, waiting

    def next_unpublished(self, user_id: str, limit: int) -> list[Job]:
        """This user's oldest visible QUEUED jobs not published yet, oldest first."""
        cursor = self.c.find({"user_id": user_id, "published": False, "state": QUEUED, **VISIBLE, **self._mine})
        return [Job.from_doc(d) for d in cursor.sort([("create_time", 1), ("_id", 1)]).limit(limit)]

    def users_waiting(self, limit: int = 1000) -> list[str]:
        """Users with visible jobs waiting for their turn, the longest waiting first."""
        return [d["_id"] for d in self.c.aggregate([
            {"$match": {"published": False, "state": QUEUED, **VISIBLE, **self._mine}},
            {"$group": {"_id": "$user_id", "oldest": {"$min": "$create_time"}}},
            {"$sort": {"oldest": 1}}, {"$limit": limit}])]

    def leave_express(self, job_id: str, mp3_fid: ObjectId) -> bool:
        """An express conversion found its job too long for the lane: the job is
        QUEUED again, unpublished and refused by the express lane, so the fair
        dispatcher publishes it on the normal lane in its user's turn; the
        attempt is not counted. False if this attempt no longer holds it."""
        r = self.c.update_one(
            # QUEUED too: the discarded attempt may have released the job already (Mp3Store.discard_quietly).
            {"_id": job_id, "state": {"$in": [QUEUED, PROCESSING]}, "current_mp3_fid": mp3_fid, **LIVE},
            {"$set": {"state": QUEUED, "lease_until": None, "published": False, "express_refused": True,
                      "update_time": now()},
             # Not a conversion attempt that failed or crashed (what `attempts` counts for dead letters).
             "$inc": {"attempts": -1}})
        return r.modified_count == 1

    def unpublished(self, older_than: dt.datetime, limit: int = 100) -> list[Job]:
        return [Job.from_doc(d) for d in self.c.find(
            # A job still uploading is published by its upload's end (finish_upload).
            {"published": False, "state": QUEUED, "create_time": {"$lt": older_than}, **VISIBLE, **self._mine},
            limit=limit,
        )]

    def count_by_state(self) -> dict[str, int]:
        """How many live jobs are in each state (one aggregate query; for metrics).
        Jobs still uploading count too: the converter may be working on them; a
        resumable upload's job only once published (else no converter has it)."""
        return {d["_id"]: d["n"] for d in self.c.aggregate([
            {"$match": {**LIVE, "$or": [{"tus": None}, {"published": True}]}},
            {"$group": {"_id": "$state", "n": {"$sum": 1}}}]) if d["_id"]}

    def unpublished_summary(self) -> tuple[int, dt.datetime | None]:
        """(how many QUEUED jobs are unpublished, the oldest one's create_time); for metrics."""
        found = list(self.c.aggregate([
            {"$match": {"published": False, "state": QUEUED, **VISIBLE, **self._mine}},
            {"$group": {"_id": None, "n": {"$sum": 1}, "oldest": {"$min": "$create_time"}}}]))
        return (found[0]["n"], found[0]["oldest"]) if found else (0, None)

    def get_for_user(self, job_id: str, user_id: str) -> Job | None:
        return _job(self.c.find_one({"_id": job_id, "user_id": user_id, **VISIBLE}))

    def get_by_request(self, user_id: str, request_id: str) -> Job | None:
        # Hidden while uploading: a retry waits for the upload (gateway/request_ids.py).
        return _job(self.c.find_one({"user_id": user_id, "request_id": request_id, **VISIBLE}))

    def get_live_by_request(self, user_id: str, request_id: str) -> Job | None:
        """The job holding this request_id, hidden or not (a resumable upload's)."""
        return _job(self.c.find_one({"user_id": user_id, "request_id": request_id, **LIVE}))

    def get_live_for_user(self, job_id: str, user_id: str) -> Job | None:
        """The job, hidden or not, if it is this user's (a resumable upload's)."""
        return _job(self.c.find_one({"_id": job_id, "user_id": user_id, **LIVE}))

    def get_many_for_user(self, job_ids: list[str], user_id: str) -> dict[str, Job]:
        """The caller's jobs among `job_ids` that its owner may see, by id."""
        return {d["_id"]: Job.from_doc(d)
                for d in self.c.find({"_id": {"$in": job_ids}, "user_id": user_id, **VISIBLE})}

    def live(self, job_ids: list[str]) -> dict[str, Job]:
        """The jobs among `job_ids` that exist (one query, for the watchers)."""
        return {d["_id"]: Job.from_doc(d) for d in self.c.find({"_id": {"$in": job_ids}, **VISIBLE})}

    def list_for_user(self, user_id: str, limit: int, before: tuple | None,
                      states: list[State] | None = None) -> list[Job]:
        """Newest first; `before` is the (create_time, _id) of the last job of the previous page."""
        query: dict = {"user_id": user_id, **VISIBLE}
        if states:
            query["state"] = {"$in": [str(x) for x in states]}
        if before:
            t, jid = before
            query["$or"] = [{"create_time": {"$lt": t}},
                            {"create_time": t, "_id": {"$lt": jid}}]
        cursor = self.c.find(query).sort([("create_time", -1), ("_id", -1)]).limit(limit)
        return [Job.from_doc(d) for d in cursor]

    def mark_deleted(self, job_id: str, user_id: str | None = None) -> Job | None:
        """Step one of a delete: hide the job and stop its conversion. Returns
        it, or None if there is no such (live) job: only one caller wins. Its
        owner (`user_id`) cannot delete a job still uploading: it does not exist yet."""
        query: dict = {"_id": job_id, **LIVE}
        if user_id is not None:
            query.update(VISIBLE, user_id=user_id)
        return self._mark_deleted(query)

    def _mark_deleted(self, query: dict) -> Job | None:
        return _job(self.c.find_one_and_update(
            query,
            # The request_id is free again at once: a new upload with it is a new job.
            {"$set": {"deleted": True, "update_time": now(), "lease_until": None},
             "$unset": {"request_id": ""}},
            return_document=pymongo.ReturnDocument.AFTER))

    # --- uploads in progress (gateway/early_jobs.py, gateway/janitor.py) -----

    def touch_uploads(self, job_ids: list[str]) -> None:
        """The heartbeat of the uploads this gateway is receiving (one write for all)."""
        self.c.update_many({"_id": {"$in": job_ids}, "uploading": True},
                           {"$set": {"upload_touched": now()}})

    def finish_upload(self, job_id: str, video_size: int, filename: str,
                      declared_seconds: float | None = None) -> Job | None:
        """The upload ended (its file is complete): the job becomes visible, as it is
        now (QUEUED, PROCESSING or even DONE). None if it was deleted meanwhile.
        `declared_seconds`: the audio its file declares, if it does (gateway/quotas.py)."""
        declared = {"declared_seconds": float(declared_seconds)} if declared_seconds else {}
        return _job(self.c.find_one_and_update(
            {"_id": job_id, "uploading": True, **LIVE},
            {"$set": {"video_size": video_size, "filename": filename, "update_time": now(), **declared},
             "$unset": {"uploading": "", "upload_touched": "", "tus": "", "spool": ""}},
            return_document=pymongo.ReturnDocument.AFTER))

    def claim_stale_upload(self, touched_before: dt.datetime, user_id: str | None = None,
                           request_id: str | None = None) -> Job | None:
        """Step one of deleting a job whose upload's gateway died (no heartbeat
        since `touched_before`), optionally the one holding a request_id; None
        when there is none."""
        # A resumable upload is never stale: it expires (gateway/tus.py).
        query: dict = {"uploading": True, "upload_touched": {"$lt": touched_before}, "tus": None, **LIVE}
        if request_id is not None:
            query.update(user_id=user_id, request_id=request_id)
        return self._mark_deleted(query)

    def abandon_upload(self, job_id: str, mp3_fid: ObjectId, touched_before: dt.datetime) -> bool:
        """The converter gives up on an upload with no heartbeat since `touched_before`:
        the job is QUEUED again and marked unpublished, so that if its gateway
        was alive after all, the upload's end publishes it again (finish_upload's
        caller); if it died, the janitor deletes it. False if the upload ended meanwhile."""
        return self._hand_back_upload(job_id, mp3_fid, {"upload_touched": {"$lt": touched_before}})

    def yield_upload(self, job_id: str, mp3_fid: ObjectId) -> bool:
        """A converter copying an upload as it arrives (converter/spool.py) steps
        aside for jobs waiting behind it: as abandon_upload, with the heartbeat
        still beating, so the upload's end publishes the job again. False if the
        upload ended meanwhile (then the copy is nearly done: it goes on)."""
        return self._hand_back_upload(job_id, mp3_fid, {})

    def _hand_back_upload(self, job_id: str, mp3_fid: ObjectId, also: dict) -> bool:
        r = self.c.update_one(
            {"_id": job_id, "current_mp3_fid": mp3_fid, "uploading": True, **also, **LIVE},
            {"$set": {"state": QUEUED, "lease_until": None, "published": False, "update_time": now()}})
        return r.modified_count == 1

    # --- retention sweep (domain/retention.py) ------------------------------

    def claim_for_sweep(self, due: dict, owner: str, t: dt.datetime, lease_s: float) -> Job | None:
        """Take one job matching `due` that no live sweep holds; None if none is left."""
        return _job(self.c.find_one_and_update(
            {"$and": [due, {"$or": [{"sweep_until": None}, {"sweep_until": {"$lte": t}}]}]},
            {"$set": {"sweep_owner": owner, "sweep_until": t + dt.timedelta(seconds=lease_s)}},
            return_document=pymongo.ReturnDocument.AFTER))

    def swept(self, job_id: str, owner: str, fields: dict) -> None:
        """Record what the sweep removed and release its claim."""
        self.c.update_one({"_id": job_id, "sweep_owner": owner},
                          {"$set": {**fields, "sweep_until": None}})

    def purge(self, job_id: str) -> None:
        self.c.delete_one({"_id": job_id})

    def forget_video(self, job_id: str) -> None:
        self.c.update_one({"_id": job_id}, {"$set": {"video_fid": None}})

    # --- converter side -----------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        return _job(self.c.find_one({"_id": job_id}))

    def start_attempt(self, job_id: str, mp3_fid: ObjectId, lease_s: float) -> Job | None:
        """Take the job for one conversion attempt writing MP3 `mp3_fid`.

        Succeeds unless the job is final or another worker holds a live lease
        (it renews the lease as it makes progress). The attempt's MP3 id is
        recorded *before* anything is written, so a crash leaves a name to clean
        up. Returns the job as it was before, or None.
        """
        t = now()
        return _job(self.c.find_one_and_update(
            {"_id": job_id, "state": {"$nin": list(FINAL_STATES)}, **LIVE,
             "$or": [{"state": {"$ne": PROCESSING}}, {"lease_until": {"$lt": t}},
                     {"lease_until": None}]},
            # progress is kept: a watcher never sees it go back on a retry.
            {"$set": {"state": PROCESSING, "update_time": t, **NOTIFY,
                      "current_mp3_fid": mp3_fid, "lease_until": t + dt.timedelta(seconds=lease_s)},
             **_event("job.processing"),
             "$inc": {"attempts": 1},
             "$push": {"pending_mp3_fids": mp3_fid}},
            return_document=pymongo.ReturnDocument.BEFORE,
        ))

    def renew(self, job_id: str, mp3_fid: ObjectId, percent: int, lease_s: float) -> bool:
        """Record progress (it only grows) and extend the lease; False if this
        attempt lost the job (another attempt took it, or it was deleted)."""
        t = now()
        r = self.c.update_one(
            {"_id": job_id, "state": PROCESSING, "current_mp3_fid": mp3_fid, **LIVE},
            {"$set": {"update_time": t, "lease_until": t + dt.timedelta(seconds=lease_s)},
             "$max": {"progress": percent}})
        return r.matched_count == 1

    def add_part(self, job_id: str, mp3_fid: ObjectId, part_fid: ObjectId) -> bool:
        """Record one more MP3 this attempt (`mp3_fid`) is about to write (a
        chapter of a split), before it is written, as start_attempt does for
        the first; False if the lease is no longer this attempt's."""
        r = self.c.update_one(
            {"_id": job_id, "state": PROCESSING, "current_mp3_fid": mp3_fid, **LIVE},
            {"$push": {"pending_mp3_fids": part_fid}})
        return r.matched_count == 1

    def finish_done(self, job_id: str, mp3_fid: ObjectId, mp3_size: int,
                    files: tuple[Mp3File, ...] = (), audio_seconds: float = 0.0) -> bool:
        """True if this attempt's MP3 became the job's; False if the job is final
        already or another attempt took it over. `files`: every MP3 written
        (the first is `mp3_fid`), mp3_size their total."""
        t = now()
        fids = [mp3_fid, *(f.fid for f in files if f.fid != mp3_fid)]
        r = self.c.update_one(
            {"_id": job_id, "state": PROCESSING, "current_mp3_fid": mp3_fid, **LIVE},
            {"$set": {"state": DONE, "progress": 100, "mp3_fid": mp3_fid,
                      "mp3_files": [f.to_doc() for f in files],
                      "mp3_size": mp3_size, "audio_seconds": float(audio_seconds), "error": "",
                      "update_time": t, "complete_time": t,
                      "lease_until": None, **NOTIFY},
             **_event("job.done"),
             "$pullAll": {"pending_mp3_fids": fids}},
        )
        return r.modified_count == 1

    def release(self, job_id: str, mp3_fid: ObjectId) -> None:
        """Give the job back (shutdown or a retryable error) so the next delivery need not wait for the lease."""
        self.c.update_one({"_id": job_id, "state": PROCESSING, "current_mp3_fid": mp3_fid},
                          {"$set": {"state": QUEUED, "lease_until": None, "update_time": now()}})

    def finish_failed(self, job_id: str, reason: str) -> bool:
        t = now()
        r = self.c.update_one(
            {"_id": job_id, "state": {"$nin": list(FINAL_STATES)}, **LIVE},
            {"$set": {"state": FAILED, "error": reason, "update_time": t, "complete_time": t,
                      "lease_until": None, **NOTIFY}, **_event("job.failed")},
        )
        return r.modified_count == 1

    # --- webhook events (gateway/webhook_events.py) ---------------------------

    def with_events(self, limit: int = 100) -> list[tuple[Job, list[str]]]:
        """Visible jobs with events not turned into webhook deliveries yet, and
        those events (hidden jobs wait until their upload ends)."""
        return [(Job.from_doc(d), list(d.get("pending_events") or []))
                for d in self.c.find({**NOTIFY, **VISIBLE}, limit=limit)]

    def events_recorded(self, job_id: str, events: list[str]) -> None:
        """Remove the events handled; the flag goes once none is left (an event
        added meanwhile keeps it)."""
        if events:
            self.c.update_one({"_id": job_id}, {"$pullAll": {"pending_events": events}})
        self.c.update_one({"_id": job_id, "$or": [{"pending_events": {"$size": 0}},
                                                  {"pending_events": None}]},
                          {"$unset": {"notify": "", "pending_events": ""}})

    def forget_pending(self, job_id: str, mp3_fids: list[ObjectId]) -> None:
        self.c.update_one({"_id": job_id}, {"$pullAll": {"pending_mp3_fids": mp3_fids}})


def _ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:  # pymongo returns naive UTC datetimes by default
        value = value.replace(tzinfo=dt.UTC)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def to_proto(job: Job, expire_time: dt.datetime | None = None,
             purge_time: dt.datetime | None = None) -> media_pb2.Job:
    """`expire_time`, `purge_time`: from domain/retention.py (the gateway's settings)."""
    proto = media_pb2.Job(
        job_id=job.id,
        state=STATE_TO_PROTO[job.state],
        progress=job.progress,
        error=job.error,
        filename=job.filename,
        video_size_bytes=job.video_size,
        mp3_size_bytes=job.mp3_size,
        options=job.options,
        files=[f.to_proto() for f in job.files],
    )
    times = {"create_time": job.create_time, "update_time": job.update_time,
             "complete_time": job.complete_time, "expire_time": expire_time,
             "purge_time": purge_time}
    for field, value in times.items():
        ts = _ts(value)
        if ts is not None:
            getattr(proto, field).CopyFrom(ts)
    return proto


def task_for(job: Job) -> queue_pb2.ConversionTask:
    """The queue message that asks a converter to convert this job."""
    task = queue_pb2.ConversionTask(
        video_fid=str(job.video_fid), user_email=job.user_email, job_id=job.id)
    task.options.CopyFrom(job.options)
    return task
