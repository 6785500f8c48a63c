"""Runs the converter: `python -m converter`.

A small supervisor keeps CONVERTER_WORKERS worker processes (each with
prefetch 1) alive: a worker that dies, even by SIGKILL or a decoder crash, is
replaced, and its unacked message is redelivered by RabbitMQ. SIGTERM/SIGINT
is passed on to the workers, which finish or requeue their job within
GRACE_SECONDS; stragglers are killed after that.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time

from common.logging import setup_logging
from common.settings import load
from converter.config import ConverterConfig
from converter.worker import run_worker

log = logging.getLogger("converter")
RESTART_BACKOFF_S = 1.0


def main() -> None:
    setup_logging("converter")
    cfg = load(ConverterConfig)
    ctx = mp.get_context("spawn")  # no pymongo/pika state shared across fork
    stopping = threading.Event()

    def on_signal(signum, _frame):
        log.info("got %s, stopping workers (grace %.0fs)", signal.Signals(signum).name, cfg.grace_seconds)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def start(i: int):
        p = ctx.Process(target=run_worker, args=(cfg, i), name=f"converter-{i}", daemon=False)
        p.start()
        if cfg.nice and p.pid is not None:
            # Batch work: the API and the store come first (CONVERTER_NICE).
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, p.pid, cfg.nice)
        return p

    workers = {i: start(i) for i in range(cfg.workers)}
    log.info("started %d worker(s) on queue %s", cfg.workers, cfg.rabbit.queue)
    while not stopping.wait(0.5):
        for i, p in list(workers.items()):
            if not p.is_alive():
                log.error("worker %d exited (code %s); starting a new one", i, p.exitcode)
                time.sleep(RESTART_BACKOFF_S)
                workers[i] = start(i)

    for p in workers.values():
        if p.is_alive():
            p.terminate()  # SIGTERM: graceful in the worker
    deadline = time.monotonic() + cfg.grace_seconds + 5
    for p in workers.values():
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            log.warning("worker %s did not stop in time; killing it", p.name)
            p.kill()
            p.join()
    log.info("stopped")


if __name__ == "__main__":
    main()
