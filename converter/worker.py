"""One converter worker process: run_worker wires it, Worker keeps what outlives a task.

    converter/consumer.py  RabbitMQ mechanics: consume, heartbeats, settle, copies
    converter/worker.py    per process: a delivery becomes a Task; dead letters
    converter/task.py      one task, step by step: lease, convert, store, finish
    converter/policy.py    how each way a task ends settles its delivery

What they keep together: a message is acked once its job is final
(DONE/FAILED), and only after the MP3 is stored and the job updated; retried
in place (unacked, so no delivery is spent) while MongoDB is unreachable; and
handed back when we are shutting down: a fresh copy is queued and the
delivery acked, because a requeued message counts against the queue's
delivery limit, and a job caught by a few restarts in a row must not be
dead-lettered as if it had crashed its worker. Only an unexpected error
requeues (and counts). A dead letter whose job was not really attempted that
often is queued again, a bounded number of times; otherwise its job fails.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator

import pymongo.errors

from video2mp3.converter import limits, policy
from video2mp3.converter.config import ConverterConfig
from video2mp3.converter.consumer import Consumer
from video2mp3.converter.mp3_store import Mp3Store
from video2mp3.converter.policy import DeadLetter, Outcome
from video2mp3.converter.task import Task
from video2mp3.core import request_id
from video2mp3.core.process import die_with_parent
from video2mp3.domain import jobs, retention
from video2mp3.domain.queue import MAX_DELIVERIES, decode_task, express_queue
from video2mp3.domain.usage import MinutesLedger
from video2mp3.storage.mongo import Mongo
from video2mp3.telemetry import metrics

log = logging.getLogger(__name__)


def run_worker(cfg: ConverterConfig, index: int, busy: ctypes.Array | None = None,
               express: bool = False) -> None:
    """Entry point of a worker process. SIGTERM: stop taking work, let the
    in-flight job finish within the grace period, else hand it back.
    `busy`: one mark per worker of the supervisor, set while it converts (shared);
    `express`: consume the express lane (gateway/outbox.py) instead of the queue."""
    from video2mp3.core.logging import setup_logging
    from video2mp3.telemetry import tracing

    setup_logging("converter", worker=index)
    tracing.setup_tracing("converter")
    die_with_parent()  # never an orphan consuming with no supervisor
    limits.limit_memory(cfg.memory_limit_mb)
    stopping, cancel = threading.Event(), threading.Event()
    mongo = Mongo(cfg.mongo)
    worker = Worker(cfg, mongo, stopping, cancel, busy, index, express=express)
    rabbit = dataclasses.replace(cfg.rabbit, queue=express_queue(cfg.rabbit.queue)) if express else cfg.rabbit
    consumer = Consumer(rabbit, worker.on_task, worker.on_dead_letter, stopping,
                        # The queue's depth: for `auto` overlap, and for a copy to step aside (converter/spool.py).
                        count_waiting=cfg.overlap_mode == "auto" or cfg.spool_max_mb > 0,
                        announce_to=cfg.rabbit.queue)
    # The kernel's CPU backstop (converter/limits.py); runs on this, the consumer's, thread.
    signal.signal(signal.SIGXCPU, worker.on_cpu_limit)
    worker.on_final = consumer.announce_final

    def on_term(_signum, _frame):
        stopping.set()
        timer = threading.Timer(cfg.grace_seconds, cancel.set)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor turns Ctrl-C into SIGTERM
    try:
        consumer.run()
    finally:
        mongo.close()
        tracing.shutdown()


class Worker:
    """`stopping`: take no new work (waits give up and hand back);
    `cancel`: the shutdown grace is over, stop the conversion in hand.
    `busy`, `slot`: the supervisor's marks, one per worker, set while converting (shared);
    `express`: this worker serves the express lane."""

    def __init__(self, cfg: ConverterConfig, mongo: Mongo,
                 stopping: threading.Event, cancel: threading.Event,
                 busy: ctypes.Array | None = None, slot: int = 0, express: bool = False):
        self.cfg = cfg
        self.mongo = mongo
        self.jobs = jobs.JobStore(mongo.jobs)
        self.mp3s = Mp3Store(mongo, self.jobs)
        self.minutes = MinutesLedger(mongo.db)
        self.stopping = stopping
        self.cancel = cancel
        self.busy, self.slot = busy, slot
        self.express = express
        self.current_job: str | None = None  # for the CPU backstop
        # Called with a job id once the job is DONE or FAILED: the consumer
        # tells the gateways, whose watchers then need not wait for a poll
        # (domain/job_events.py).
        self.on_final: Callable[[str], None] = lambda _job_id: None

    # --- a task (on the consumer's task thread) ------------------------------

    def on_task(self, body: bytes, waiting: Callable[[], int] = lambda: 0) -> Outcome:
        """Converts one task message (`waiting()`: tasks queued behind it now). Never raises."""
        try:
            job_id = decode_task(body).job_id
        except ValueError as e:
            log.error("dropping message: %s", e)
            return Outcome.ACK
        with request_id.bound(job_id=job_id), self._converting(), self._budgeted(job_id):
            return Task(self, job_id, waiting).run()

    @contextlib.contextmanager
    def _budgeted(self, job_id: str) -> Iterator[None]:
        """The kernel's CPU backstop armed for this task (converter/limits.py)."""
        self.current_job = job_id
        limits.arm_backstop(self.cfg.cpu_budget_s)
        try:
            yield
        finally:
            limits.disarm_backstop()
            self.current_job = None

    def on_cpu_limit(self, _signum, _frame) -> None:
        """SIGXCPU: a conversion went past its CPU budget without reporting
        progress (stuck inside the decoder). Its job fails saying so, and this
        process ends: the thread cannot be stopped, the supervisor starts a new
        worker, and the redelivered task finds the job FAILED."""
        job_id = self.current_job
        if job_id is None:
            limits.disarm_backstop()
            return
        log.error("job %s: over its CPU time limit inside the decoder; failing it and restarting the worker",
                  job_id, extra={"job_id": job_id, "step": "cpu_limit"})
        try:
            self._fail(job_id, str(limits.CpuBudgetExceeded(self.cfg.cpu_budget_s)))
        except pymongo.errors.PyMongoError as e:
            log.error("job %s: could not be failed now (%s); its redelivery will try again", job_id, e)
        os._exit(70)

    @contextlib.contextmanager
    def _converting(self) -> Iterator[None]:
        """Marks this worker as converting."""
        if self.busy is None:
            yield
            return
        self.busy[self.slot] = 1
        try:
            yield
        finally:
            self.busy[self.slot] = 0

    def others_converting(self) -> int:
        """How many of the converter's other workers are converting now."""
        return sum(self.busy) - 1 if self.busy is not None else 0

    # --- a dead letter (on the consumer's connection thread) -----------------

    def on_dead_letter(self, body: bytes, headers: dict, queue_copy: Callable[[dict], bool]) -> Outcome:
        """A message dead-lettered after MAX_DELIVERIES. If its conversion
        really started that often, the file keeps killing workers: the job
        ends FAILED and the MP3s its attempts half-wrote are deleted. If not,
        the deliveries were spent on lost connections (RabbitMQ cuts), so the
        task is queued again (`queue_copy(extra headers)`), a bounded number of
        times. ACK, or REQUEUE while MongoDB is unreachable."""
        try:
            job_id = decode_task(body).job_id
            job = self.jobs.get(job_id)
            attempts, revived = (job.attempts if job else 0), policy.revivals(headers)
            decision = policy.dead_letter(job.state if job else None, attempts, revived,
                                          max_deliveries=MAX_DELIVERIES)
            metrics.QUEUE_DEAD_LETTERS.labels(decision.value).inc()
            if decision is DeadLetter.REVIVE and queue_copy(policy.revived_headers(revived)):
                log.warning("job %s dead-lettered after only %d conversion attempt(s); queued again",
                            job_id, attempts)
            elif decision is not DeadLetter.DROP:
                # Also when the copy could not be queued: never leave the job hanging.
                self._fail_crashed(job_id)
        except ValueError as e:
            log.error("dropping unreadable dead-lettered message: %s", e)
        except pymongo.errors.PyMongoError as e:
            log.warning("cannot settle dead-lettered job yet: %s", e)
            return Outcome.REQUEUE
        return Outcome.ACK

    def ended(self, job_id: str, *, keep: bool = True) -> None:
        """Job `job_id` has just become DONE or FAILED: its watchers hear of it
        at once, then its video goes unless VIDEO_RETENTION keeps it (`keep=False`:
        whatever it says). No watcher waits for the delete (~0.1 s per 50 MB);
        usage stops counting the video at the job's end (gateway/quotas.py)."""
        self.on_final(job_id)
        retention.after_final(self.mongo, self.jobs, job_id, self.cfg.retention, keep=keep)

    def _fail_crashed(self, job_id: str) -> None:
        if self._fail(job_id, policy.crashed_reason(MAX_DELIVERIES)):
            log.error("job %s dead-lettered after %d deliveries; marked FAILED", job_id, MAX_DELIVERIES)

    def _fail(self, job_id: str, reason: str) -> bool:
        """The job FAILED with `reason` (if not final yet), its video and the
        MP3s its attempts half-wrote deleted. True if this call failed it."""
        failed = self.jobs.finish_failed(job_id, reason)
        if failed:
            self.ended(job_id)
        job = self.jobs.get(job_id)
        if job is not None and job.state == jobs.FAILED:
            self.mp3s.delete_leftovers(job_id, list(job.pending_mp3_fids))
        return failed
