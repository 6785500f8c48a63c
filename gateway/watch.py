"""WatchJob's engine: one poller per gateway process for every watched job.

MongoDB is asked once per WATCH_POLL_INTERVAL_S, with one `{_id: {$in: [...]}}`
query for all the jobs anyone is watching in this process, however many
watchers each has; nothing is asked while nobody watches. Each watched job has
an entry holding its latest snapshot and a version number; the poller bumps
the version when something a watcher is told about changed (Job.changes) and
wakes that job's watchers through the entry's condition variable. So 50
watchers of one job cost what one does: 2 queries a second (bench/watch.py).
A job's end is not left to the next poll: the converter announces it
(domain/job_events.py) and nudge() makes the poller look at once, so a
watcher learns of DONE within a query's time of it being written.

Each watcher is a server-streaming RPC holding a handler thread: at most
MAX_WATCHERS run at once (the rest get RESOURCE_EXHAUSTED with a retry
delay), fewer than MEDIA_MAX_WORKERS, so the other RPCs always have threads.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Protocol

import pymongo.errors

from video2mp3.core.errors import NotFound, Reason, ResourceExhausted, Unavailable
from video2mp3.domain import jobs
from video2mp3.telemetry import metrics

log = logging.getLogger(__name__)

BUSY_RETRY_S = 5.0
# How often a waiting watcher checks whether its client is still there (it
# is also woken at once by grpc's termination callback).
IDLE_CHECK_S = 5.0


class LiveJobs(Protocol):
    """What the hub asks of the job store (jobs.JobStore)."""

    def live(self, job_ids: list[str]) -> dict[str, jobs.Job]: ...


class _Entry:
    def __init__(self, job: jobs.Job, lock: threading.Lock):
        self.job: jobs.Job | None = job  # None: deleted
        self.version = 0
        self.watchers = 0
        self.changed = threading.Condition(lock)


class WatchHub:
    def __init__(self, store: LiveJobs, *, interval_s: float, max_watchers: int):
        self.store = store
        self.interval_s = interval_s
        self.max_watchers = max_watchers
        self._slots = threading.BoundedSemaphore(max_watchers)
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._stopping = threading.Event()
        self._anyone = threading.Event()  # set while something is watched
        self._nudged = threading.Event()  # poll now: a watched job has just ended
        self._thread = threading.Thread(target=self._poll_loop, name="watch-poller", daemon=True)
        self.polls = 0  # queries made, for tests

    def start(self) -> WatchHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ends every watch (UNAVAILABLE: watch again, another replica answers)."""
        self._stopping.set()
        self._anyone.set()
        self._nudged.set()
        with self._lock:
            for e in self._entries.values():
                e.changed.notify_all()

    # --- a watcher (on its RPC's thread) -------------------------------------

    def watch(self, first: jobs.Job, context) -> Iterator[jobs.Job]:
        """`first` (already read and owned by the caller), then each change,
        until the job is final. Raises NotFound if it is deleted meanwhile."""
        if not self._slots.acquire(blocking=False):
            raise ResourceExhausted(
                f"too many jobs are being watched on this server (at most {self.max_watchers}); "
                "retry in a few seconds, or poll GetJob",
                reason=Reason.TOO_MANY_WATCHERS, retry_after_s=BUSY_RETRY_S,
                metadata={"limit": str(self.max_watchers)})
        metrics.WATCHERS.inc()
        try:
            yield first
            if first.state.final:
                return
            yield from self._follow(first, context)
        finally:
            metrics.WATCHERS.dec()
            self._slots.release()

    def _follow(self, sent: jobs.Job, context) -> Iterator[jobs.Job]:
        entry = self._register(sent)
        gone = threading.Event()
        context.add_callback(lambda: self._wake(entry, gone))
        try:
            seen = -1
            while True:
                with self._lock:
                    while entry.version == seen and not self._stopping.is_set() and not gone.is_set():
                        entry.changed.wait(IDLE_CHECK_S)
                        if not context.is_active():
                            return
                    if gone.is_set():
                        return
                    seen, job = entry.version, entry.job
                if self._stopping.is_set():
                    raise Unavailable("the server is restarting; watch the job again",
                                      reason=Reason.SERVER_STOPPING, retry_after_s=1.0)
                if job is None:
                    raise NotFound(f"job {sent.id} was deleted", reason=Reason.JOB_NOT_FOUND,
                                   metadata={"job_id": sent.id})
                if job.changes != sent.changes:
                    sent = job
                    yield job
                if job.state.final:
                    return
        finally:
            self._unregister(sent.id)

    def _wake(self, entry: _Entry, gone: threading.Event) -> None:
        gone.set()
        with self._lock:
            entry.changed.notify_all()

    def _register(self, job: jobs.Job) -> _Entry:
        with self._lock:
            entry = self._entries.get(job.id)
            if entry is None:
                entry = self._entries[job.id] = _Entry(job, self._lock)
            elif entry.job is not None and _newer(job, entry.job):
                entry.job = job  # the poller's copy is older than this read: no going back
            entry.watchers += 1
            self._anyone.set()
            return entry

    def _unregister(self, job_id: str) -> None:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is not None:
                entry.watchers -= 1
                if entry.watchers <= 0:
                    del self._entries[job_id]
            if not self._entries:
                self._anyone.clear()

    # --- the poller ------------------------------------------------------------

    def nudge(self, job_id: str) -> None:
        """`job_id` has just become final (domain/job_events.py): if it is
        watched here, poll now instead of at the end of the interval."""
        with self._lock:
            watched = job_id in self._entries
        if watched:
            self._nudged.set()

    def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            self._anyone.wait()
            self._nudged.wait(self.interval_s)
            self._nudged.clear()
            if self._stopping.is_set():
                return
            try:
                self.poll()
            except pymongo.errors.PyMongoError as e:
                # Watchers keep waiting; the next poll catches up.
                log.warning("watch poll failed: %s", e)

    def poll(self) -> None:
        with self._lock:
            ids = list(self._entries)
        if not ids:
            return
        latest = self.store.live(ids)
        self.polls += 1
        with self._lock:
            for job_id in ids:
                entry = self._entries.get(job_id)
                if entry is None:
                    continue
                job, old = latest.get(job_id), entry.job
                if job is None and old is None:
                    continue
                if job is None or old is None or job.changes != old.changes:
                    entry.job = job
                    entry.version += 1
                    entry.changed.notify_all()


def _newer(a: jobs.Job, b: jobs.Job) -> bool:
    return a.update_time is not None and b.update_time is not None and a.update_time > b.update_time
