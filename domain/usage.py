"""The audio each user converted, for the minutes quota (gateway/quotas.py).

One document per DONE job in `conversion_minutes`: {_id: job id, user_id,
time, seconds}, written by the converter just before it marks the job DONE
(an upsert by job id: a retried or duplicate attempt counts once). It is a
ledger of its own, not a field of the job, so that deleting a job or its
expiry does not hand the minutes back: the quota counts what was converted
in the last 24 hours, whatever became of the MP3 since. Entries older than
the window are pruned by every gateway's retention sweep (gateway/__main__.py).
"""
from __future__ import annotations

import datetime as dt

import pymongo

COLLECTION = "conversion_minutes"
WINDOW = dt.timedelta(hours=24)


class MinutesLedger:
    def __init__(self, db):
        self.c = db[COLLECTION]

    def ensure_indexes(self) -> None:
        self.c.create_index([("user_id", 1), ("time", 1)])
        self.c.create_index([("time", 1)])

    def record(self, job_id: str, user_id: str, seconds: float, t: dt.datetime | None = None) -> None:
        """Counts a job's audio (its first count stands: idempotent)."""
        self.c.update_one({"_id": job_id},
                          {"$setOnInsert": {"user_id": user_id, "time": t or dt.datetime.now(dt.UTC),
                                            "seconds": float(seconds)}},
                          upsert=True)

    def since(self, user_id: str, t: dt.datetime) -> list[tuple[dt.datetime, float]]:
        """(time, seconds) of the user's conversions since t, oldest first."""
        cursor = self.c.find({"user_id": user_id, "time": {"$gt": t}}, {"time": 1, "seconds": 1}).sort(
            "time", pymongo.ASCENDING)
        return [(_aware(d["time"]), float(d.get("seconds") or 0)) for d in cursor]

    def prune(self, before: dt.datetime) -> int:
        return self.c.delete_many({"time": {"$lte": before}}).deleted_count

    def forget_user(self, user_id: str) -> None:
        self.c.delete_many({"user_id": user_id})


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)  # pymongo's naive UTC
