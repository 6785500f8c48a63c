"""The fair queue against the real mesh (gateway/outbox.py): user A uploads a
backlog, then user B one small job; the order in which the jobs completed
(their complete_time in MongoDB, never a wall-clock threshold) says whether
B waited behind A's whole backlog.

Each case runs a mesh of its own with one normal converter worker, so the
order is decided by the queue alone:

* fair (FAIR_QUEUE_PER_USER=1, no express lane): B's job waits behind at most
  the job converting and the one of A's waiting in RabbitMQ;
* first in, first out (FAIR_QUEUE_PER_USER=0): B's job comes after A's whole
  backlog, which shows the test can tell the two apart;
* the express lane (the defaults): B's job is converted at once by the
  express worker, and a long job that started there (EXPRESS_CPU_S) is
  finished on the normal lane, converted once.
"""
from __future__ import annotations

import concurrent.futures

import pytest

from localmesh.processes import wait_for
from testkit import prom
from testkit.faults import SLOW_OPTIONS, Store, make_long_audio, user_client
from video2mp3.domain import jobs
from video2mp3.domain.queue import express_queue

BACKLOG = 6
SERVICES = ("auth", "gateway", "converter")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("fair")
    # ~1 s of LAME per job with SLOW_OPTIONS: long against an upload, short for a test.
    return make_long_audio(d / "long.flac", 3), make_long_audio(d / "small.flac", 0.05)


def run_backlog_then_small(stack, inputs, backlog_queued: bool = False) -> tuple[list[dict], dict]:
    """A's backlog (uploaded 3 at a time), then B's small job; all their job
    documents once final. backlog_queued: B uploads once every job of A's is
    in RabbitMQ (with no bound per user they all go there; a job whose
    dispatch met a concurrent upload's is published at the outbox's next
    round, up to REPUBLISH_INTERVAL_S later, so without this B may come first)."""
    long, small = inputs
    a, b = user_client(stack), user_client(stack)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        a_ids = list(pool.map(lambda i: a.upload(long, filename=f"a{i}.flac", timeout=120, **SLOW_OPTIONS).job_id,
                              range(BACKLOG)))
    store = Store(stack.env["MONGO_URI"])
    try:
        if backlog_queued:
            wait_for("A's whole backlog to be published",
                     lambda: all(store.job(j)["published"] for j in a_ids), timeout=30)
        b_id = b.upload(small, filename="b.flac", timeout=120, **SLOW_OPTIONS).job_id
        a_docs = [store.wait_final(j, timeout=300) for j in a_ids]
        b_doc = store.wait_final(b_id, timeout=300)
    finally:
        store.close()
    for doc in [*a_docs, b_doc]:
        assert doc["state"] == jobs.DONE, doc
        assert doc["attempts"] >= 1
    return a_docs, b_doc


def done_before(a_docs: list[dict], b_doc: dict) -> int:
    return sum(1 for d in a_docs if d["complete_time"] < b_doc["complete_time"])


def test_fair_queue_small_job_waits_behind_at_most_one_conversion(mesh_factory, inputs):
    stack = mesh_factory(services=SERVICES, CONVERTER_WORKERS=1, CONVERTER_EXPRESS_WORKERS=0,
                         EXPRESS_MAX_BYTES=0, FAIR_QUEUE_PER_USER=1, CONVERTER_OVERLAP="off")
    a_docs, b_doc = run_backlog_then_small(stack, inputs)
    # At most the one converting when B uploaded and the one of A's waiting in RabbitMQ.
    assert done_before(a_docs, b_doc) <= 2, [d["complete_time"] for d in a_docs]
    assert all(d["lane"] == jobs.NORMAL_LANE for d in [*a_docs, b_doc])


def test_without_the_bound_the_small_job_waits_for_the_whole_backlog(mesh_factory, inputs):
    stack = mesh_factory(services=SERVICES, CONVERTER_WORKERS=1, CONVERTER_EXPRESS_WORKERS=0,
                         EXPRESS_MAX_BYTES=0, FAIR_QUEUE_PER_USER=0, CONVERTER_OVERLAP="off")
    a_docs, b_doc = run_backlog_then_small(stack, inputs, backlog_queued=True)
    assert done_before(a_docs, b_doc) == BACKLOG


@pytest.mark.parametrize("leaves_by", [
    # Its declared length (3 minutes) is over EXPRESS_MAX_AUDIO_S: it leaves before decoding.
    {"EXPRESS_MAX_AUDIO_S": 60},
    # Nothing declared would be too long: it leaves once it used EXPRESS_CPU_S (at its minimum).
    {"EXPRESS_MAX_AUDIO_S": 10**6, "EXPRESS_CPU_S": 0.1},
], ids=["declared", "cpu"])
def test_express_lane_takes_the_small_job_and_hands_long_ones_back(mesh_factory, inputs, leaves_by):
    # A's first job (A had nothing in flight) starts on the express lane and
    # must leave it for the normal one.
    stack = mesh_factory(services=SERVICES, CONVERTER_WORKERS=1, CONVERTER_EXPRESS_WORKERS=1,
                         CONVERTER_OVERLAP="off", **leaves_by)
    # The gateway uses the lane once its RabbitMQ check has seen the express worker consume it.
    lane = express_queue(stack.env["QUEUE_NAME"])
    wait_for("the gateway to see the express lane's consumer",
             lambda: prom.scrape(stack.metrics_urls["gateway"]).value("video2mp3_queue_consumers", queue=lane) >= 1,
             timeout=60, interval=0.5)
    a_docs, b_doc = run_backlog_then_small(stack, inputs)
    assert b_doc["lane"] == jobs.EXPRESS_LANE
    assert done_before(a_docs, b_doc) <= 1, [d["complete_time"] for d in a_docs]
    left = [d for d in a_docs if d.get("express_refused")]
    assert left, "A's first job should have started on the express lane"
    for d in left:
        assert d["lane"] == jobs.NORMAL_LANE
        assert d["attempts"] == 1  # the express attempt it left is not counted: converted once, on the normal lane
    log = stack.log_tail("converter", 2000)
    assert "too long for the express lane" in log
    store = Store(stack.env["MONGO_URI"])
    try:
        for d in [*a_docs, b_doc]:
            store.assert_one_mp3(d["_id"])
    finally:
        store.close()
