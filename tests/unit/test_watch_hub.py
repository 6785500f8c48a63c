"""gateway/watch.py alone, with a fake job store: one query per poll however
many watch, one message per change, the watcher limit, delete and stop."""
from __future__ import annotations

import dataclasses
import threading
import time

import grpc
import pytest

from video2mp3.core.errors import NotFound, ResourceExhausted, Unavailable
from video2mp3.domain import jobs
from video2mp3.gateway.watch import WatchHub


class FakeStore:
    def __init__(self, job: jobs.Job):
        self.job: jobs.Job | None = job
        self.queries = 0
        self.lock = threading.Lock()

    def live(self, ids):
        with self.lock:
            self.queries += 1
            return {self.job.id: self.job} if self.job is not None and self.job.id in ids else {}

    def set(self, **changes):
        assert self.job is not None
        with self.lock:
            self.job = dataclasses.replace(self.job, update_time=jobs.now(), **changes)


class FakeContext:
    def __init__(self):
        self.active = True
        self.callbacks = []

    def is_active(self):
        return self.active

    def add_callback(self, cb):
        self.callbacks.append(cb)
        return True


def queued() -> jobs.Job:
    return jobs.Job(id="j1", user_id="u", user_email="u@x", filename="a.mp4", state=jobs.QUEUED,
                    update_time=jobs.now())


def start(hub, first, n):
    results: list[list[jobs.Job] | Exception | None] = [None] * n

    def run(i):
        try:
            results[i] = list(hub.watch(first, FakeContext()))
        except Exception as e:  # noqa: BLE001 - recorded for the assertions
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads, results


def settle(hub, watchers):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with hub._lock:
            if sum(e.watchers for e in hub._entries.values()) == watchers:
                return
        time.sleep(0.01)
    raise AssertionError("watchers did not register")


def test_fifty_watchers_share_one_query_per_poll_and_see_every_change():
    store = FakeStore(queued())
    hub = WatchHub(store, interval_s=0.05, max_watchers=64).start()
    threads, results = start(hub, store.job, 50)
    settle(hub, 50)
    for state, progress in [(jobs.PROCESSING, 0), (jobs.PROCESSING, 30), (jobs.PROCESSING, 60),
                            (jobs.DONE, 100)]:
        store.set(state=state, progress=progress)
        time.sleep(0.2)
    for t in threads:
        t.join(5)
    for r in results:
        assert [(j.state, j.progress) for j in r] == [
            (jobs.QUEUED, 0), (jobs.PROCESSING, 0), (jobs.PROCESSING, 30), (jobs.PROCESSING, 60),
            (jobs.DONE, 100)], r
    # ~1 s of watching at 0.05 s: about 20 queries for all 50 watchers, not 50 times that.
    assert store.queries < 40, store.queries
    queries = store.queries
    time.sleep(0.3)
    assert store.queries == queries  # nobody watches: no queries
    hub.stop()


def test_limit_delete_and_stop():
    store = FakeStore(queued())
    hub = WatchHub(store, interval_s=0.05, max_watchers=2).start()
    threads, results = start(hub, store.job, 2)
    settle(hub, 2)
    assert store.job is not None
    with pytest.raises(ResourceExhausted) as e:
        list(hub.watch(store.job, FakeContext()))
    assert e.value.retry_after_s
    assert e.value.status_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    store.job = None  # deleted
    for t in threads:
        t.join(5)
    assert all(isinstance(r, NotFound) for r in results), results

    store.job = queued()
    threads, results = start(hub, store.job, 1)
    settle(hub, 1)
    hub.stop()
    threads[0].join(5)
    assert isinstance(results[0], Unavailable), results


def test_a_cancelled_watcher_leaves_at_once():
    store = FakeStore(queued())
    hub = WatchHub(store, interval_s=0.05, max_watchers=1).start()
    ctx = FakeContext()
    out: list[jobs.Job] = []
    first = store.job
    assert first is not None
    t = threading.Thread(target=lambda: out.extend(hub.watch(first, ctx)))
    t.start()
    settle(hub, 1)
    ctx.active = False
    for cb in ctx.callbacks:
        cb()
    t.join(2)
    assert not t.is_alive()
    assert len(out) == 1
    settle(hub, 0)
    list(hub.watch(dataclasses.replace(first, state=jobs.DONE), FakeContext()))  # the slot is free
    hub.stop()


def test_a_nudge_for_a_watched_job_polls_at_once_and_others_are_ignored():
    # A poll interval far longer than the test: only a nudge can make the
    # watcher see DONE in time (domain/job_events.py sends them).
    store = FakeStore(queued())
    hub = WatchHub(store, interval_s=60, max_watchers=4).start()
    threads, results = start(hub, store.job, 1)
    settle(hub, 1)
    store.set(state=jobs.DONE, progress=100)
    queries = store.queries
    hub.nudge("some-other-job")  # not watched here: no query
    time.sleep(0.2)
    assert store.queries == queries
    hub.nudge("j1")
    threads[0].join(5)
    assert not threads[0].is_alive()
    assert [(j.state, j.progress) for j in results[0]] == [(jobs.QUEUED, 0), (jobs.DONE, 100)]
    assert store.queries == queries + 1
    hub.stop()
