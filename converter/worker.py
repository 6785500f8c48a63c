"""One converter worker process: run_worker wires its three layers.

    converter/consumer.py    RabbitMQ mechanics: consume, heartbeats, settle, copies
    converter/policy.py      what becomes of a delivery: ack, requeue, hand back, revive
    converter/conversion.py  the conversion of one job: lease, transcode, finish

What they keep together: a message is acked once its job is final
(DONE/FAILED), and only after the MP3 is stored and the job updated; retried
in place (unacked, so no delivery is spent) while MongoDB is unreachable; and
handed back when we are shutting down: a fresh copy is queued and the
delivery acked, because a requeued message counts against the queue's
delivery limit, and a job caught by a few restarts in a row must not be
dead-lettered as if it had crashed its worker. Only an unexpected error
requeues (and counts). A dead letter whose job was not really attempted that
often is queued again, a bounded number of times; otherwise its job fails.

Exactly one MP3 per job: each attempt takes a lease on the job and writes a
new GridFS id that is recorded on the job *before* writing; the next attempt
deletes leftovers of crashed ones, and DONE is set only by the attempt that
holds the lease, so a losing duplicate deletes its own MP3.
"""
from __future__ import annotations

import ctypes
import signal
import threading

from video2mp3.converter.config import ConverterConfig
from video2mp3.converter.consumer import Consumer
from video2mp3.converter.conversion import JobRunner
from video2mp3.core.process import die_with_parent
from video2mp3.storage.mongo import Mongo


def run_worker(cfg: ConverterConfig, index: int, busy: ctypes.Array | None = None) -> None:
    """Entry point of a worker process. SIGTERM: stop taking work, let the
    in-flight job finish within the grace period, else hand it back.
    `busy`: one mark per worker of the supervisor, set while it converts (shared)."""
    from video2mp3.core.logging import setup_logging
    from video2mp3.telemetry import tracing

    setup_logging("converter", worker=index)
    tracing.setup_tracing("converter")
    die_with_parent()  # never an orphan consuming with no supervisor
    stopping, cancel = threading.Event(), threading.Event()
    mongo = Mongo(cfg.mongo)
    runner = JobRunner(cfg, mongo, stopping, cancel, busy, index)
    consumer = Consumer(cfg.rabbit, runner.process, runner.dead_letter, stopping,
                        count_waiting=cfg.overlap_mode == "auto")

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
