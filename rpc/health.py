"""Background dependency checks that drive grpc.health.v1 and /health.

Each check is a callable that raises when its dependency is unreachable. The
monitor runs them every `interval` seconds on one thread, keeps the last
answer of each, and flips the service's grpc.health.v1 status between SERVING
and NOT_SERVING, so Kubernetes probes and Envoy see outages without an RPC
paying for the check. Each answer is also video2mp3_dependency_up{dependency}.
The converter's supervisor runs one with no health servicer, for the metric.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from grpc_health.v1 import health_pb2

from video2mp3.core.periodic import Periodic
from video2mp3.telemetry import metrics

log = logging.getLogger(__name__)

CONNECTED = "connected"


class DependencyMonitor:
    def __init__(self, checks: dict[str, Callable[[], None]], health_servicer,
                 service_names: list[str], interval: float = 2.0,
                 critical: set[str] | None = None):
        self.checks = checks
        # Dependencies without which the service cannot serve at all; the
        # others only degrade it (e.g. the gateway queues jobs while RabbitMQ is down).
        self.critical = set(checks) if critical is None else critical
        self.health = health_servicer
        self.service_names = service_names
        self._status = {name: "unknown: not checked yet" for name in checks}
        self._loop = Periodic("health", interval, self.check_now)

    def start(self) -> DependencyMonitor:
        self.check_now()
        self._loop.start()
        return self

    def stop(self) -> None:
        self._loop.stop()

    def status(self) -> dict[str, str]:
        return dict(self._status)

    def healthy(self) -> bool:
        return all(v == CONNECTED for v in self._status.values())

    def check_now(self) -> None:
        for name, check in self.checks.items():
            try:
                check()
                value = CONNECTED
            except Exception as e:  # noqa: BLE001 - any failure means "down"; say why
                value = f"disconnected: {e}"
            if value != self._status.get(name):
                (log.info if value == CONNECTED else log.warning)("%s: %s", name, value)
            self._status[name] = value
            metrics.DEPENDENCY_UP.labels(name).set(1 if value == CONNECTED else 0)
        if self.health is None:
            return
        up = all(self._status[name] == CONNECTED for name in self.critical)
        serving = (health_pb2.HealthCheckResponse.SERVING if up
                   else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in [*self.service_names, ""]:
            self.health.set(service, serving)
