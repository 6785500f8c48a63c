"""Safe retries of UploadVideo (AIP-155 request_id).

Two guarantees, two mechanisms:

* never a second job: jobs carry the request_id under a unique index on
  (user_id, request_id) (domain/jobs.py), so whatever races happen, a second
  insert fails and its upload returns the first job, deleting its own video;
* never a second copy of the video, in practice: before storing any byte an
  upload *reserves* the request_id in the `requests` collection (a unique
  _id of user and request_id). A retry that finds the reservation waits,
  without reading its own bytes, until the first upload ends: it then returns
  that job (and reads and drops its own bytes), or, if the first upload
  failed and released the reservation, takes it and uploads itself.

A reservation is held with a lease that the uploading gateway renews as bytes
arrive; one whose gateway died runs out and is taken over. Different callers
never collide: the user id is part of the key. Stale reservations are deleted
by the retention sweep.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
import uuid

import pymongo
import pymongo.errors

from video2mp3.core.errors import Cancelled, Reason
from video2mp3.domain import jobs

log = logging.getLogger(__name__)

# Longer than any pause between two messages of a live upload; a reservation
# not renewed for this long lost its gateway.
LEASE_S = 60.0
RENEW_EVERY_S = 5.0
WAIT_STEP_S = 0.2
# The reservations (gateway/user_data.py deletes a user's too).
COLLECTION = "requests"


class Reservation:
    def __init__(self, coll, key: str, owner: str):
        self.coll, self.key, self.owner = coll, key, owner
        self._renewed = time.monotonic()

    def renew(self) -> None:
        """Called as bytes arrive; writes at most every RENEW_EVERY_S."""
        if time.monotonic() - self._renewed < RENEW_EVERY_S:
            return
        self._renewed = time.monotonic()
        self.coll.update_one({"_id": self.key, "owner": self.owner},
                             {"$set": {"lease_until": _lease_end()}})

    def release(self) -> None:
        try:
            self.coll.delete_one({"_id": self.key, "owner": self.owner})
        except pymongo.errors.PyMongoError as e:  # its lease runs out instead
            log.warning("could not release request reservation %s: %s", self.key, e)


def _lease_end() -> dt.datetime:
    return jobs.now() + dt.timedelta(seconds=LEASE_S)


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


class RequestIds:
    def __init__(self, db, store: jobs.JobStore):
        self.coll = db[COLLECTION]
        self.store = store

    def begin(self, user_id: str, request_id: str, context) -> jobs.Job | Reservation:
        """The job this request already made, or a Reservation to make it.
        Waits while another upload with the same request_id is in progress."""
        key = f"{user_id}/{request_id}"
        owner = uuid.uuid4().hex
        waited = False
        while True:
            job = self.store.get_by_request(user_id, request_id)
            if job is not None:
                if waited:
                    log.info("request %s: retry answered with job %s", key, job.id)
                return job
            try:
                self.coll.insert_one({"_id": key, "user_id": user_id, "request_id": request_id,
                                      "owner": owner, "lease_until": _lease_end(),
                                      "create_time": jobs.now()})
                return Reservation(self.coll, key, owner)
            except pymongo.errors.DuplicateKeyError:
                pass
            held = self.coll.find_one({"_id": key})
            if held is None:
                continue  # released meanwhile: try again
            if _aware(held["lease_until"]) < jobs.now():
                taken = self.coll.find_one_and_update(
                    {"_id": key, "owner": held["owner"]},
                    {"$set": {"owner": owner, "lease_until": _lease_end()}})
                if taken is not None:
                    log.warning("request %s: took over a reservation whose upload stopped", key)
                    # Its upload may have recorded the job just before dying.
                    job = self.store.get_by_request(user_id, request_id)
                    if job is not None:
                        Reservation(self.coll, key, owner).release()
                        return job
                    return Reservation(self.coll, key, owner)
                continue
            waited = True
            time.sleep(WAIT_STEP_S)
            if not context.is_active():
                raise Cancelled("the client cancelled the upload", reason=Reason.UPLOAD_CANCELLED)

    def sweep(self, older_than_s: float = 3600.0) -> int:
        """Reservations whose lease ran out long ago (their gateway died)."""
        cutoff = jobs.now() - dt.timedelta(seconds=older_than_s)
        return self.coll.delete_many({"lease_until": {"$lt": cutoff}}).deleted_count
