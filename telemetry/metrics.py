"""Prometheus metrics: every series the services export, declared once, and
the endpoint that serves them.

Each service serves /metrics on its own port (AUTH_METRICS_PORT 9101,
MEDIA_METRICS_PORT 9102, CONVERTER_METRICS_PORT 9103; 0 disables). The
converter is several processes: its supervisor points PROMETHEUS_MULTIPROC_DIR
at a fresh directory *before* anything imports prometheus_client (so every
process writes its samples there), serves their sum, and marks dead workers
with mark_process_dead. docs/operations.md says what each series means;
deploy/grafana and deploy/prometheus use them, and a test checks every name
they use is really exported.
"""
from __future__ import annotations

import logging
import os

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

log = logging.getLogger(__name__)

# `_created` series double the output and nothing here reads them.
prometheus_client.disable_created_metrics()

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# ---------------------------------------------------------------- gRPC (rpc/observe.py)
RPC_HANDLED = Counter(
    "video2mp3_grpc_server_handled", "RPCs completed, by method and gRPC status code",
    ["grpc_service", "grpc_method", "grpc_code"])
RPC_SECONDS = Histogram(
    "video2mp3_grpc_server_handling_seconds", "Time from an RPC's start to its status, by method",
    ["grpc_service", "grpc_method"],
    buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300))

# ---------------------------------------------------------------- uploads (gateway)
UPLOAD_BYTES = Counter("video2mp3_upload_bytes", "Video bytes stored by completed uploads")
# "while_uploading": a streamable file (gateway/early_jobs.py) whose
# conversion started as it arrived; "after_upload": every other one.
UPLOADS = Counter("video2mp3_uploads", "Completed uploads, by when their conversion could start", ["conversion"])
# Resumable uploads (gateway/tus.py): created, PATCH requests by how they
# ended, completed, expired or terminated.
TUS_UPLOADS = Counter("video2mp3_tus_uploads", "Resumable (tus) uploads, by event",
                      ["event"])
TUS_PATCHES = Counter("video2mp3_tus_patches", "tus PATCH requests, by outcome", ["outcome"])
# Webhooks (gateway/webhook_dispatch.py): deliveries made by event, attempts by outcome.
WEBHOOK_DELIVERIES = Counter("video2mp3_webhook_deliveries", "Webhook deliveries created, by event type",
                             ["event"])
WEBHOOK_ATTEMPTS = Counter("video2mp3_webhook_attempts", "Webhook delivery attempts, by outcome",
                           ["outcome"])
WEBHOOK_PENDING = Gauge("video2mp3_webhook_pending", "Webhook deliveries waiting for an attempt")
UPLOAD_SECONDS = Histogram(
    "video2mp3_upload_duration_seconds", "Time a completed upload took, first message to job recorded",
    buckets=(.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800))

# ---------------------------------------------------------------- jobs and outbox (gateway)
# Limits per job (domain/limits.py) and quotas per user (gateway/quotas.py).
LIMIT_REFUSALS = Counter("video2mp3_limit_refusals",
                         "Uploads refused and jobs failed for breaking a limit or quota, by kind (audio_duration, "
                         "mp3_size, storage_quota, minutes_quota) and where (upload, conversion)", ["kind", "where"])
JOBS = Gauge("video2mp3_jobs", "Jobs in MongoDB by state, counted every JOB_STATS_INTERVAL_S", ["state"])
OUTBOX_BACKLOG = Gauge("video2mp3_outbox_backlog", "QUEUED jobs RabbitMQ has not confirmed yet")
OUTBOX_OLDEST_AGE = Gauge("video2mp3_outbox_oldest_age_seconds",
                          "Age of the oldest job RabbitMQ has not confirmed yet (0: none)")
JOBS_DELETED = Counter("video2mp3_jobs_deleted",
                       "Jobs deleted on request, by whom: owner (DeleteJob), account (DeleteMyData)", ["by"])
RETENTION_DELETED = Counter("video2mp3_retention_deleted",
                            "What the retention sweep deleted, by kind: videos, mp3s, jobs", ["kind"])
WATCHERS = Gauge("video2mp3_watchers", "WatchJob streams open on this gateway")
# Every label value from the start, so a rate() has a series before the first deletion.
for _by in ("owner", "account"):
    JOBS_DELETED.labels(_by)
for _kind in ("videos", "mp3s", "jobs"):
    RETENTION_DELETED.labels(_kind)
OUTBOX_REPUBLISHED = Counter("video2mp3_outbox_republished", "Jobs the outbox published after a failed publish")

# ---------------------------------------------------------------- RabbitMQ (gateway, converter)
QUEUE_PUBLISHES = Counter("video2mp3_queue_publishes", "Task messages sent to RabbitMQ", ["kind"])
QUEUE_CONFIRMS = Counter("video2mp3_queue_confirms", "Task messages RabbitMQ confirmed", ["kind"])
QUEUE_PUBLISH_FAILURES = Counter("video2mp3_queue_publish_failures",
                                 "Task messages RabbitMQ refused or did not confirm in time", ["kind"])
QUEUE_ACKS = Counter("video2mp3_queue_acks", "Deliveries (tasks and dead letters) acked by converter workers")
QUEUE_NACKS = Counter("video2mp3_queue_nacks", "Deliveries nacked with requeue by converter workers")
QUEUE_REDELIVERIES = Counter("video2mp3_queue_redeliveries",
                             "Task deliveries RabbitMQ marked as redelivered")
QUEUE_DEAD_LETTERS = Counter("video2mp3_queue_dead_letters",
                             "Dead-lettered tasks handled, by decision (revive, fail, drop)", ["decision"])
QUEUE_MESSAGES = Gauge("video2mp3_queue_messages", "Messages ready in a queue, read at each health check",
                       ["queue"], multiprocess_mode="livemax")
QUEUE_CONSUMERS = Gauge("video2mp3_queue_consumers", "Consumers of a queue, read at each health check",
                        ["queue"], multiprocess_mode="livemax")

# ---------------------------------------------------------------- conversions (converter)
CONVERSIONS = Counter(
    "video2mp3_conversions", "Conversion attempts by outcome: done, failed (bad input), superseded, "
    "duplicate, interrupted (shutdown), error (unexpected; requeued), deleted (the job was deleted), left_express "
    "(too long for the express lane; queued again on the normal one), yielded (an upload being copied was "
    "handed back for the tasks waiting behind it: converter/spool.py)", ["outcome"])
CONVERSION_SECONDS = Histogram(
    "video2mp3_conversion_seconds", "Wall time of a successful conversion",
    buckets=(.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600))
REALTIME_FACTOR = Histogram(
    "video2mp3_conversion_realtime_factor", "Seconds of audio converted per wall-clock second",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
AUDIO_SECONDS = Counter("video2mp3_conversion_audio_seconds", "Seconds of audio in the MP3s made")
GRIDFS_READ_BYTES = Counter("video2mp3_gridfs_read_bytes",
                            "Video bytes fetched from GridFS by conversions (skipped video data is not)")
SPOOLS = Counter("video2mp3_conversion_spools",
                 "Uploads with their index at the end copied to local disk as they arrived, by how the copy "
                 "ended: complete (converted from it), yielded (handed back for waiting tasks), no_room "
                 "(CONVERTER_SPOOL_MAX_MB or _RESERVE_MB: converted from MongoDB)", ["outcome"])
STREAM_FALLBACKS = Counter("video2mp3_conversion_stream_fallbacks",
                           "Conversions of a file still arriving that failed and waited for the complete file")
ENCODER_JOINS = Counter(
    "video2mp3_conversion_encoder_joins", "Joins of two LAME encoders' segments in the MP3s made "
    "(converter/split_encode.py), by result: joined, or fallback (no frame qualified; one encoder went on)",
    ["result"])
CONVERSION_READ_BYTES = Histogram(
    "video2mp3_conversion_read_bytes", "Video bytes fetched from GridFS per conversion",
    buckets=tuple(float(2 ** n) for n in range(16, 32, 2)))
BUSY_WORKERS = Gauge("video2mp3_converter_busy_workers", "Converter workers holding a task",
                     multiprocess_mode="livesum")
WORKER_RESTARTS = Counter("video2mp3_converter_worker_restarts", "Converter workers that died and were replaced")

# ---------------------------------------------------------------- dependencies (rpc/health.py)
DEPENDENCY_UP = Gauge("video2mp3_dependency_up", "1 if the last check of a dependency succeeded, else 0",
                      ["dependency"], multiprocess_mode="livemax")


def multiprocess_registry() -> CollectorRegistry:
    """The sum over every process writing to PROMETHEUS_MULTIPROC_DIR."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def serve(port: int, *, registry: CollectorRegistry | None = None, addr: str = "0.0.0.0"):
    """Serve /metrics on `port` in a daemon thread; port 0 serves nothing.
    Returns the HTTP server (or None). A port in use is logged, not fatal:
    the service matters more than its metrics (and the scrape's `up` says so)."""
    if port <= 0:
        return None
    if registry is None and os.environ.get(MULTIPROC_ENV):
        registry = multiprocess_registry()
    try:
        server, _thread = prometheus_client.start_http_server(
            port, addr=addr, registry=registry or prometheus_client.REGISTRY)
    except OSError as e:
        log.error("cannot serve metrics on %s:%d (%s); running without them", addr, port, e)
        return None
    log.info("metrics on :%d/metrics", port)
    return server


def mark_process_dead(pid: int) -> None:
    """A worker is gone: drop its live gauges (its counters stay in the sum)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)
