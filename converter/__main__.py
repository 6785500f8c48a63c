"""Runs the converter: `python -m video2mp3.converter`.

A small supervisor keeps CONVERTER_WORKERS worker processes (each with
prefetch 1) and CONVERTER_EXPRESS_WORKERS on the express lane alive: a worker
that dies, even by SIGKILL or a decoder crash, is replaced, and its unacked
message is redelivered by RabbitMQ. SIGTERM/SIGINT is passed on to the workers, which finish or requeue their job within
GRACE_SECONDS; stragglers are killed after that.

Metrics: the supervisor gives every process one PROMETHEUS_MULTIPROC_DIR
(the given one, emptied, or a temporary one it removes at exit), serves the
sum on CONVERTER_METRICS_PORT, and checks MongoDB and RabbitMQ itself for
video2mp3_dependency_up and the queue depth.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from video2mp3.converter.config import ConverterConfig
from video2mp3.core.logging import setup_logging
from video2mp3.core.settings import load

log = logging.getLogger("converter")
RESTART_BACKOFF_S = 1.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_dir() -> tuple[Path, bool]:
    """An empty directory for every process's samples, exported to the
    environment the workers inherit; and whether we made it (so remove it).
    Must run before anything imports prometheus_client."""
    given = os.environ.get(MULTIPROC_ENV, "").strip()
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for f in path.glob("*.db"):  # a previous run's: would be summed in
            f.unlink()
        return path, False
    path = Path(tempfile.mkdtemp(prefix="video2mp3-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path, True


def main() -> None:
    setup_logging("converter")
    cfg = load(ConverterConfig)
    samples, own_dir = metrics_dir()
    # Only now: these import prometheus_client, which picks its mode at import.
    from video2mp3.converter.worker import run_worker
    from video2mp3.domain.queue import Publisher
    from video2mp3.rpc.health import DependencyMonitor
    from video2mp3.storage.mongo import Mongo
    from video2mp3.telemetry import metrics

    ctx = mp.get_context("spawn")  # no pymongo/pika state shared across fork
    stopping = threading.Event()
    # One mark per worker, set while it converts (converter/policy.overlap);
    # per worker, so a worker that dies mid-job cannot leave the count wrong.
    total = cfg.workers + cfg.express_workers  # the express ones last
    busy = ctx.Array("b", total, lock=False)

    def on_signal(signum, _frame):
        log.info("got %s, stopping workers (grace %.0fs)", signal.Signals(signum).name, cfg.grace_seconds)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def start(i: int):
        busy[i] = 0  # a dead predecessor's mark
        express = i >= cfg.workers
        p = ctx.Process(target=run_worker, args=(cfg, i, busy, express), daemon=False,
                        name=f"converter-{'express-' if express else ''}{i}")
        p.start()
        nice = cfg.express_nice if express else cfg.nice
        if nice and p.pid is not None:
            # Batch work: the API and the store come first (CONVERTER_NICE);
            # a short job before a backlog (CONVERTER_EXPRESS_NICE).
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, p.pid, nice)
        return p

    metrics.serve(cfg.metrics_port)
    mongo, publisher = Mongo(cfg.mongo), Publisher(cfg.rabbit)
    # The check also services the connection's heartbeats: at least two per heartbeat period.
    monitor = DependencyMonitor({"mongodb": mongo.ping, "rabbitmq": publisher.check}, None, [],
                                interval=min(cfg.dependency_check_s, cfg.rabbit.heartbeat / 2))
    workers = {i: start(i) for i in range(total)}
    log.info("started %d worker(s) on queue %s, %d on its express lane", cfg.workers, cfg.rabbit.queue,
             cfg.express_workers)
    # First check in the background: a dependency that is down must not delay the workers.
    threading.Thread(target=monitor.start, name="health-start", daemon=True).start()
    while not stopping.wait(0.5):
        for i, p in list(workers.items()):
            if not p.is_alive():
                log.error("worker %d exited (code %s); starting a new one", i, p.exitcode)
                metrics.mark_process_dead(p.pid)
                metrics.WORKER_RESTARTS.inc()
                time.sleep(RESTART_BACKOFF_S)
                workers[i] = start(i)

    monitor.stop()
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
        metrics.mark_process_dead(p.pid)
    publisher.close()
    mongo.close()
    if own_dir:
        with contextlib.suppress(OSError):
            shutil.rmtree(samples)
    log.info("stopped")


if __name__ == "__main__":
    main()
