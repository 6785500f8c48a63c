"""How long a job's files and record are kept, and the one code that deletes them.

    video  VIDEO_RETENTION after the job is final (DONE or FAILED); 0, the
           default, means at once: the converter calls after_final() as it
           finishes (a phone-sized video is the biggest thing stored). The
           sweep catches any it missed (a crash in between).
    MP3    MP3_RETENTION after complete_time (the Job's expire_time). The job
           stays, marked mp3_expired, so a download says "expired", not
           "no such job".
    record JOB_RETENTION after complete_time (the Job's purge_time; never
           before the MP3), then the job is gone: NOT_FOUND.

sweep() runs in every gateway (gateway/__main__.py). Several may run at once:
each job is claimed atomically with a lease (JobStore.claim_for_sweep) before
anything is deleted, and deleting a file twice (a claim that expired) is a
no-op. The same code finishes deletes (DeleteJob) a dead gateway left halfway.

Every file is deleted by id, a bounded range of chunks per query
(storage/gridfs_download.delete_file), never by scanning chunks: MP3s being
written are found on the job (current_mp3_fid, pending_mp3_fids), and chunks a
worker wrote after its job was deleted, then died, by their in-progress
`mp3s.uploads` record (gateway/janitor.py).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid

from bson import ObjectId

from video2mp3.core.settings import setting
from video2mp3.domain import jobs
from video2mp3.storage.gridfs_download import delete_file
from video2mp3.storage.mongo import MP3S_BUCKET, VIDEOS_BUCKET, Mongo

log = logging.getLogger(__name__)

DAY_S = 86400.0
# A sweep's claim on one job; far longer than deleting its files takes.
SWEEP_LEASE_S = 60.0
# A DeleteJob this old that is still marked, not removed, lost its gateway.
STALE_DELETE_S = 60.0


@dataclasses.dataclass(frozen=True)
class RetentionSettings:
    video_s: float = setting("VIDEO_RETENTION", 0.0, minimum=0, help=(
        "seconds a video is kept after its job is DONE or FAILED; 0 deletes it at once"))
    mp3_s: float = setting("MP3_RETENTION", 7 * DAY_S, minimum=0, help=(
        "seconds an MP3 is kept after its job completed (the Job's `expire_time`; the default is 7 days)"))
    job_s: float = setting("JOB_RETENTION", 7 * DAY_S, minimum=0, help=(
        "seconds a job record is kept after it completed (`purge_time`, never before its MP3 goes; the default is "
        "7 days)"))
    sweep_interval_s: float = setting("RETENTION_SWEEP_INTERVAL_S", 60.0, minimum=0.1, help=(
        "how often each gateway deletes what expired, seconds"))

    @property
    def purge_s(self) -> float:
        return max(self.job_s, self.mp3_s)


def _after(t: dt.datetime | None, seconds: float) -> dt.datetime | None:
    if t is None:
        return None
    if t.tzinfo is None:  # pymongo's naive UTC
        t = t.replace(tzinfo=dt.UTC)
    return t + dt.timedelta(seconds=seconds)


def expire_time(job: jobs.Job, s: RetentionSettings) -> dt.datetime | None:
    """When the job's files go (None while it is not final)."""
    return _after(job.complete_time, s.mp3_s) if job.state.final else None


def purge_time(job: jobs.Job, s: RetentionSettings) -> dt.datetime | None:
    return _after(job.complete_time, s.purge_s) if job.state.final else None


def mp3_expired(job: jobs.Job, s: RetentionSettings, now: dt.datetime | None = None) -> bool:
    """Past expire_time, whether or not the sweep has deleted it yet."""
    if job.mp3_expired:
        return True
    t = expire_time(job, s)
    return t is not None and t <= (now or jobs.now())


# --- deleting files -------------------------------------------------------------

def _delete_file(mongo: Mongo, bucket: str, fid) -> None:
    """A GridFS file and its chunks, a bounded range of chunks per query
    (storage/gridfs_download.delete_file: an unbounded chunk query can make
    the store build its whole result); a file already gone, or only half
    written (chunks without a files document), is fine."""
    if fid is None:
        return
    if not isinstance(fid, ObjectId):
        try:
            fid = ObjectId(fid)
        except Exception:  # noqa: BLE001 - a malformed reference: nothing to delete
            return
    delete_file(mongo.db, bucket, fid)


def delete_video(mongo: Mongo, job: jobs.Job) -> None:
    _delete_file(mongo, VIDEOS_BUCKET, job.video_fid)


def delete_mp3s(mongo: Mongo, job: jobs.Job) -> None:
    """The MP3s (one per chapter of a split job) and any an attempt is
    writing or left half-written."""
    done = {f.fid for f in job.mp3_files}
    for fid in {job.mp3_fid, job.current_mp3_fid, *job.pending_mp3_fids, *done} - {None}:
        _delete_file(mongo, MP3S_BUCKET, fid)


def delete_job(mongo: Mongo, store: jobs.JobStore, job: jobs.Job) -> None:
    """Steps two and three of a delete (step one is JobStore.mark_deleted)."""
    delete_video(mongo, job)
    delete_mp3s(mongo, job)
    store.purge(job.id)


def after_final(mongo: Mongo, store: jobs.JobStore, job_id: str, s: RetentionSettings,
                keep: bool = True) -> None:
    """Called by the converter once a job is DONE or FAILED: the video goes
    now unless VIDEO_RETENTION keeps it (then the sweep deletes it later);
    `keep=False` deletes it now whatever VIDEO_RETENTION says (a job over a
    limit per job keeps nothing: domain/limits.py). Best effort: the job's
    outcome is recorded already, and a video this misses (MongoDB down a
    moment) is the sweep's."""
    if s.video_s > 0 and keep:
        return
    try:
        job = store.get(job_id)
        if job is None or job.video_fid is None:
            return
        delete_video(mongo, job)
        store.forget_video(job_id)
        log.info("job %s: video %s deleted (VIDEO_RETENTION=0)", job_id, job.video_fid)
    except Exception as e:  # noqa: BLE001 - the MP3 is safe; only disk is at stake until the sweep
        log.warning("job %s: could not delete its video now (the retention sweep will): %s", job_id, e)


# --- the sweep ------------------------------------------------------------------

def _due(s: RetentionSettings, t: dt.datetime) -> dict:
    """Jobs with something to delete at time t."""
    final = {"$in": [str(x) for x in jobs.FINAL_STATES]}

    def before(seconds: float) -> dict:
        return {"$lte": t - dt.timedelta(seconds=seconds)}

    return {"$or": [
        {"deleted": True, "update_time": before(STALE_DELETE_S)},
        {"state": final, "complete_time": before(s.purge_s)},
        {"state": final, "complete_time": before(s.video_s), "video_fid": {"$ne": None}},
        {"state": str(jobs.DONE), "complete_time": before(s.mp3_s), "mp3_expired": {"$ne": True}},
    ]}


def sweep(mongo: Mongo, store: jobs.JobStore, s: RetentionSettings,
          t: dt.datetime | None = None, limit: int = 1000) -> dict[str, int]:
    """Deletes what is due; returns counts. Safe to run in several processes at once."""
    t = t or jobs.now()
    owner = uuid.uuid4().hex
    counts = {"videos": 0, "mp3s": 0, "jobs": 0}
    for _ in range(limit):
        job = store.claim_for_sweep(_due(s, t), owner, t, SWEEP_LEASE_S)
        if job is None:
            break
        purge_at = purge_time(job, s)
        if job.deleted or (purge_at is not None and purge_at <= t):
            delete_job(mongo, store, job)
            counts["jobs"] += 1
            continue
        fields: dict = {}
        video_at = _after(job.complete_time, s.video_s)
        if job.video_fid is not None and video_at is not None and video_at <= t:
            delete_video(mongo, job)
            fields["video_fid"] = None
            counts["videos"] += 1
        if job.state == jobs.DONE and not job.mp3_expired and mp3_expired(job, s, t):
            delete_mp3s(mongo, job)
            fields.update(mp3_expired=True, mp3_fid=None, mp3_files=[], pending_mp3_fids=[])
            counts["mp3s"] += 1
        store.swept(job.id, owner, fields)
    # Imported here: the converter's config imports this module before its
    # supervisor has set PROMETHEUS_MULTIPROC_DIR (converter/__main__.py).
    from video2mp3.telemetry import metrics

    for kind, n in counts.items():
        metrics.RETENTION_DELETED.labels(kind).inc(n)
    if any(counts.values()):
        log.info("retention sweep deleted %(videos)d video(s), %(mp3s)d MP3(s), %(jobs)d job(s)", counts)
    return counts
