"""The fair dispatcher (gateway/outbox.py) against SecantusDB: which jobs it
publishes, in what order, and that several gateways running it at once never
publish a job twice nor overrun a user's bound. `send` stands in for
RabbitMQ (it records and marks the job published, as Uploads.send does)."""
from __future__ import annotations

import threading

from bson import ObjectId

from video2mp3.domain import jobs
from video2mp3.gateway.outbox import FairQueueSettings, Outbox
from video2mp3.media.v1 import media_pb2


class Sent:
    def __init__(self, store: jobs.JobStore):
        self.store = store
        self.calls: list[tuple[str, bool]] = []
        self.lock = threading.Lock()

    def __call__(self, job: jobs.Job, express: bool) -> bool:
        with self.lock:
            self.calls.append((job.id, express))
        self.store.mark_published(job.id, jobs.EXPRESS_LANE if express else jobs.NORMAL_LANE)
        return True


def make_job(store: jobs.JobStore, job_id: str, user: str, size: int = 1000) -> jobs.Job:
    return store.create(job_id=job_id, user_id=user, user_email=f"{user}@example.com", filename="f.mp4",
                        video_fid=ObjectId(), video_size=size, options=media_pb2.ConversionOptions())


def outbox(m, sent: Sent, **fair) -> Outbox:
    return Outbox(sent.store, m.db["dispatch"], sent, 0.5, FairQueueSettings(**fair))


def take(store: jobs.JobStore, job_id: str) -> None:
    """A worker takes the job (QUEUED -> PROCESSING)."""
    assert store.start_attempt(job_id, ObjectId(), 15) is not None


def test_one_job_per_user_waits_and_the_rest_follow_in_order(mongo_server):
    with mongo_server.scratch("fair") as m:
        store = jobs.JobStore(m.jobs)
        store.ensure_indexes()
        sent = Sent(store)
        box = outbox(m, sent, per_user=1, express_max_bytes=0)
        for i in range(4):
            box.offer(make_job(store, f"a{i}", "A"))
        box.offer(make_job(store, "b0", "B"))
        assert sent.calls == [("a0", False), ("b0", False)]  # one of each user waits in RabbitMQ
        assert box.flush() == 0  # nothing was taken: no turn comes
        take(store, "a0")
        assert box.flush() == 1
        assert sent.calls[-1] == ("a1", False)  # the oldest next
        take(store, "a1")
        take(store, "b0")
        box.flush()
        assert [c[0] for c in sent.calls] == ["a0", "b0", "a1", "a2"]


def test_express_lane_for_a_user_with_nothing_in_flight(mongo_server):
    with mongo_server.scratch("fair") as m:
        store = jobs.JobStore(m.jobs)
        store.ensure_indexes()
        sent = Sent(store)
        box = outbox(m, sent, per_user=1, express_max_bytes=10_000)
        box.offer(make_job(store, "big", "C", size=20_000))  # too big: normal lane
        box.offer(make_job(store, "a0", "A"))
        box.offer(make_job(store, "a1", "A"))
        box.offer(make_job(store, "a2", "A"))
        assert sent.calls == [("big", False), ("a0", True), ("a1", False)]
        # A job that left the express lane goes to the normal one in its turn.
        fid = ObjectId()
        assert store.start_attempt("a0", fid, 15) is not None
        assert store.leave_express("a0", fid)
        left = store.get("a0")
        assert left is not None
        assert left.attempts == 0  # not counted
        take(store, "a1")
        box.flush()
        assert sent.calls[-1] == ("a0", False)
        # Without a consumer on the lane, nothing goes there.
        quiet = Outbox(store, m.db["dispatch"], sent, 0.5, FairQueueSettings(per_user=1, express_max_bytes=10_000),
                       express_consumed=lambda: False)
        quiet.offer(make_job(store, "d0", "D"))
        assert sent.calls[-1] == ("d0", False)


def test_gateways_dispatching_at_once_publish_each_job_once_within_the_bound(mongo_server):
    with mongo_server.scratch("fair") as m:
        store = jobs.JobStore(m.jobs)
        store.ensure_indexes()
        sent = Sent(store)
        boxes = [outbox(m, sent, per_user=2, express_max_bytes=0) for _ in range(4)]
        for i in range(30):
            make_job(store, f"a{i:02}", "A")
        taken = 0
        for _ in range(20):  # rounds: every gateway flushes at once, then workers take what waits
            threads = [threading.Thread(target=b.flush) for b in boxes]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            _, waiting = store.in_flight("A")
            assert waiting <= 2, waiting  # never more than the bound in RabbitMQ
            for job_id, _ in sent.calls[taken:]:
                take(store, job_id)
            taken = len(sent.calls)
        ids = [c[0] for c in sent.calls]
        assert len(ids) == len(set(ids)) == 30  # each once
        assert ids == sorted(ids)  # oldest first


def test_gateways_of_another_queue_never_publish_its_jobs(mongo_server):
    """Two meshes sharing a database, not a queue: each outbox publishes only
    the jobs made for its own queue."""
    with mongo_server.scratch("fair") as m:
        mine, theirs = jobs.JobStore(m.jobs, queue="video_a"), jobs.JobStore(m.jobs, queue="video_b")
        mine.ensure_indexes()
        sent_mine, sent_theirs = Sent(mine), Sent(theirs)
        box_mine = outbox(m, sent_mine, per_user=1, express_max_bytes=0)
        box_theirs = outbox(m, sent_theirs, per_user=1, express_max_bytes=0)
        for i in range(2):
            make_job(theirs, f"b{i}", "B")  # recorded, left for their outbox
        assert mine.users_waiting() == []
        assert box_mine.flush() == 0
        assert sent_mine.calls == []
        assert mine.unpublished_summary()[0] == 0
        assert box_theirs.flush() == 1
        assert sent_theirs.calls == [("b0", False)]
