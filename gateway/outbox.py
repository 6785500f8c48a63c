"""The outbox and the fair dispatcher: which recorded job goes to RabbitMQ, and when.

Jobs are recorded in MongoDB before they are published (`published: false`),
so a job whose publish failed (RabbitMQ down, no confirm) is still there and
is published once RabbitMQ is back. The same records make the queue fair
(docs/architecture.md, "A fair queue"):

* **Per user, a bounded number of jobs wait in RabbitMQ** (`FAIR_QUEUE_PER_USER`
  on the normal lane; 0: no bound, first in first out as before). The rest
  wait in MongoDB, unpublished, and are released oldest first as the user's
  jobs are taken by workers. RabbitMQ's queue thus holds at most that many
  jobs of each user, so its FIFO serves the users round robin: another
  user's job waits behind at most that many of a backlog's jobs, not the whole
  backlog.
* **The express lane**: a user with nothing in flight (no job published and
  not final) gets their next job published on `<queue>.express`, which the
  converter's express workers (`CONVERTER_EXPRESS_WORKERS`) take at once, if
  the video is at most `EXPRESS_MAX_BYTES`. An express conversion that uses
  more than `EXPRESS_CPU_S` of CPU gives its job back (JobStore.leave_express)
  for the normal lane, so a long file cannot hold the lane. The lane is used
  only while a converter consumes it (the gateway's RabbitMQ check sees its
  consumers every few seconds), so a converter without express workers
  strands nothing.

Every decision for one user is taken under that user's dispatch lease (a
document in `dispatch`, taken with one conditional update), so several
gateways never publish the same job twice nor overrun a user's bound; a
gateway that dies holding it delays that user by DISPATCH_LEASE_S at most. It
runs when a job is recorded (the upload's own request: no added latency when
it is the user's turn) and every REPUBLISH_INTERVAL_S for every user with a
job waiting (a worker taking a job frees a place; RabbitMQ coming back).
A job still uploading (hidden, gateway/early_jobs.py) is considered only by
its own upload's calls, as it starts and as it ends: one that does not get
its turn as it starts is converted after its upload, like any other.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable

import pymongo
import pymongo.collection
import pymongo.errors

from video2mp3.core.periodic import Periodic
from video2mp3.core.settings import setting
from video2mp3.domain import jobs
from video2mp3.telemetry import metrics

log = logging.getLogger(__name__)

# Longer than a few publishes take (each waits RABBITMQ_TIMEOUT_S at most);
# released as soon as the decisions are made.
DISPATCH_LEASE_S = 30.0


@dataclasses.dataclass(frozen=True)
class FairQueueSettings:
    per_user: int = setting("FAIR_QUEUE_PER_USER", 1, minimum=0, help=(
        "jobs of one user waiting in RabbitMQ's queue at once; the rest wait in MongoDB and are released oldest "
        "first as workers take that user's jobs, so another user's job waits behind at most this many of a "
        "backlog's jobs; `0`: no bound (first in, first out across users)"))
    express_max_bytes: int = setting("EXPRESS_MAX_BYTES", 64 * 2**20, minimum=0, help=(
        "a job of a user with nothing else queued or converting goes to the express lane (converted at once by "
        "the converter's express workers) if its video is at most this size, bytes; `0`: no express lane"))


# publish(job, express) -> True once RabbitMQ confirmed it (Uploads.send)
Send = Callable[[jobs.Job, bool], bool]


class Outbox:
    def __init__(self, job_store: jobs.JobStore, leases: pymongo.collection.Collection, send: Send,
                 interval_s: float, fair: FairQueueSettings, express_consumed: Callable[[], bool] = lambda: True):
        """`express_consumed()`: whether a converter consumes the express lane now
        (Publisher.express_consumed); while none does, every job takes the normal one."""
        self.jobs = job_store
        self.express_consumed = express_consumed
        self.leases = leases
        self.send = send
        self.fair = fair
        self.interval_s = interval_s
        self.owner = uuid.uuid4().hex
        self._loop = Periodic("outbox", interval_s, self.flush, errors=(pymongo.errors.PyMongoError,))

    def start(self) -> Outbox:
        self._loop.start()
        return self

    def stop(self) -> None:
        self._loop.stop()

    def flush(self) -> int:
        """One round over every user with a job waiting; returns how many were published."""
        published = 0
        for user_id in self.jobs.users_waiting():
            n = self.dispatch(user_id)
            if n is None:
                break  # RabbitMQ still down; try again next round
            published += n
        if published:
            metrics.OUTBOX_REPUBLISHED.inc(published)
        return published

    def offer(self, job: jobs.Job) -> bool:
        """A job just recorded (or whose upload just ended): published now if it
        is its user's turn, else left for its turn. True if it was published."""
        try:
            self.dispatch(job.user_id, job)
        except pymongo.errors.PyMongoError as e:
            log.warning("job %s not dispatched now (%s); the outbox will", job.id, e)
            return False
        found = self.jobs.get(job.id)
        return found is not None and found.published

    def dispatch(self, user_id: str, extra: jobs.Job | None = None) -> int | None:
        """Publish what this user's turn allows, oldest first (`extra`: a job
        that may be hidden, still uploading). How many were published; None
        if a publish failed (RabbitMQ down). 0 if another gateway holds the
        user's lease now: it decides."""
        if not self._take(user_id):
            return 0
        try:
            return self._dispatch(user_id, extra)
        finally:
            self._release(user_id)

    def _dispatch(self, user_id: str, extra: jobs.Job | None) -> int | None:
        per_user = self.fair.per_user
        busy, waiting = self.jobs.in_flight(user_id)
        # +1: the first may take the express lane and not count.
        candidates = self.jobs.next_unpublished(user_id, per_user + 1 if per_user else 100)
        if extra is not None and not extra.published and all(j.id != extra.id for j in candidates):
            candidates.append(extra)  # hidden (still uploading), and the newest
        published = 0
        for job in candidates:
            express = self._express(job, busy)
            if not express and per_user and waiting >= per_user:
                break
            if not self.send(job, express):
                return None
            published += 1
            busy += 1
            waiting += 0 if express else 1
        return published

    def _express(self, job: jobs.Job, busy: int) -> bool:
        limit = self.fair.express_max_bytes
        # A job copied while its upload arrives (converter/spool.py) is past the
        # limit already, whatever its video_size says until the upload ends.
        return (bool(limit) and busy == 0 and not job.express_refused and not job.spool
                and job.video_size <= limit and self.express_consumed())

    def _take(self, user_id: str) -> bool:
        t = jobs.now()
        try:
            self.leases.find_one_and_update(
                {"_id": user_id, "$or": [{"until": None}, {"until": {"$lt": t}}]},
                {"$set": {"until": t + dt.timedelta(seconds=DISPATCH_LEASE_S), "owner": self.owner}},
                upsert=True)
        except pymongo.errors.DuplicateKeyError:
            return False  # held: the upsert found no free lease and the document exists
        return True

    def _release(self, user_id: str) -> None:
        try:
            self.leases.update_one({"_id": user_id, "owner": self.owner}, {"$set": {"until": None}})
        except pymongo.errors.PyMongoError as e:  # it runs out by itself
            log.warning("could not release the dispatch lease of %s: %s", user_id, e)
