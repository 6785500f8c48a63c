"""The one way every service builds, runs and stops its gRPC server.

Each server gets: a bounded thread pool, explicit message-size limits, the
observing interceptor (rpc/observe.py: request id, span, metrics, one log
line per RPC), the one error-to-status interceptor (core/errors.py), the standard
grpc.health.v1 service, server reflection (so `grpcurl list` works without
.proto files) and a graceful SIGTERM/SIGINT stop.
"""
from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from video2mp3.core.errors import ErrorInterceptor
from video2mp3.rpc.observe import ObserveInterceptor

log = logging.getLogger(__name__)

# A grpc.health.v1 service name that is SERVING while the server runs,
# whatever its dependencies: what Kubernetes' liveness probe asks for, so an
# outage takes pods out of rotation (readiness, service "") without restarting them.
LIVENESS = "liveness"

# Upload chunks from Envoy are well under 1 MiB; 4 MiB leaves room without
# letting one message eat memory.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# All of a request's metadata (headers): a bearer token is well under 1 KiB.
# Beyond this grpc refuses the call (RESOURCE_EXHAUSTED); Envoy's own bound
# for REST and gRPC clients is max_request_headers_kb in deploy/envoy.yaml.
MAX_METADATA_BYTES = 16 * 1024


class Service:
    """A servicer plus what the server needs to register it."""

    def __init__(self, servicer, add_to_server: Callable, full_name: str):
        self.servicer = servicer
        self.add_to_server = add_to_server
        self.full_name = full_name


def build_server(
    services: Iterable[Service],
    port: int,
    *,
    host: str = "0.0.0.0",
    max_workers: int = 16,
    interceptors: Iterable = (),
    health_servicer: health.HealthServicer | None = None,
    also_reflect: Iterable[str] = (),
) -> tuple[grpc.Server, health.HealthServicer]:
    """Pass `health_servicer` (from new_health()) when something, such as a
    DependencyMonitor, must drive the health status before the server exists.
    `also_reflect` names services served elsewhere behind the same front door
    whose descriptors this server's reflection should offer too."""
    services = list(services)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        # Observe outermost, so it sees the status the error interceptor sets;
        # errors next, so errors raised by the other interceptors get a rich status too.
        interceptors=[ObserveInterceptor(), ErrorInterceptor(), *interceptors],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
            # Reject rather than queue once every worker thread is busy.
            ("grpc.max_concurrent_streams", max_workers * 4),
            # Envoy pings idle upstream connections every 30 s
            # (deploy/envoy.yaml, connection_keepalive) to notice a killed
            # service; gRPC's defaults call pings without calls abuse and
            # answer GOAWAY "Too many pings", failing the next request.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
        maximum_concurrent_rpcs=max_workers * 4,
    )
    health_servicer = health_servicer or new_health()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for s in services:
        s.add_to_server(s.servicer, server)
        health_servicer.set(s.full_name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [s.full_name for s in services] + list(also_reflect)
        + [health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise SystemExit(f"cannot listen on {host}:{port}: address in use?")
    return server, health_servicer


def new_health() -> health.HealthServicer:
    return health.HealthServicer(experimental_non_blocking=True)


def run_until_signalled(
    server: grpc.Server,
    health_servicer: health.HealthServicer,
    *,
    grace_seconds: float,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Start the server and block until SIGTERM/SIGINT, then stop gracefully:
    report NOT_SERVING, refuse new RPCs, give in-flight ones `grace_seconds`."""
    stopping = threading.Event()

    def _signal(signum, _frame):
        log.info("got %s, stopping (grace %.0fs)", signal.Signals(signum).name, grace_seconds)
        stopping.set()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    server.start()
    stopping.wait()
    health_servicer.enter_graceful_shutdown()
    if on_stop:
        on_stop()
    server.stop(grace_seconds).wait()
    log.info("stopped")
