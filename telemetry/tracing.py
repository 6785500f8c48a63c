"""OpenTelemetry tracing: one trace per upload, from the client (or Envoy)
through the gateway, the queue and the converter.

Spans: each gRPC server call (rpc/observe.py) and client call
(client_channel), the publish of a task (PRODUCER), its delivery (CONSUMER)
and its conversion. W3C `traceparent` travels in gRPC metadata and in the
task message's AMQP headers, next to `x-request-id` (message_headers /
consuming); the job document keeps both, so a job the outbox publishes later
joins its upload's trace.

Nothing is recorded unless OTEL_EXPORTER_OTLP_ENDPOINT is set: without it no
SDK is installed at all, the API's no-op tracer costs next to nothing, and an
incoming traceparent is still passed on unchanged. The exporter reads the
standard OTEL_* variables (OTEL_EXPORTER_OTLP_PROTOCOL is grpc here;
OTEL_TRACES_SAMPLER, OTEL_SERVICE_NAME...). TRACE_SPANS_DIR (tests) makes each
process also write its finished spans as JSON lines to a file there.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from video2mp3.core import request_id
from video2mp3.core.settings import load, setting

TRACER_NAME = "video2mp3"
HEALTH_SERVICE = "grpc.health.v1.Health"

_provider = None


@dataclasses.dataclass(frozen=True)
class TracingSettings:
    otlp_endpoint: str = setting("OTEL_EXPORTER_OTLP_ENDPOINT", "", help=(
        "export traces over OTLP/gRPC there (e.g. `http://otel-collector:4317`); the standard `OTEL_*` variables "
        "apply. Unset: no tracing SDK at all"))
    spans_dir: Path | None = setting("TRACE_SPANS_DIR", None, help=(
        "for the tests: each process writes its finished spans as JSON lines in this folder"))


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def setup_tracing(service: str) -> None:
    """Install the SDK if something is to receive spans; else leave the no-op API."""
    global _provider
    s = load(TracingSettings)
    if not s.otlp_endpoint and s.spans_dir is None:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if s.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if s.spans_dir is not None:
        path = s.spans_dir / f"{service}-{os.getpid()}.jsonl"
        provider.add_span_processor(SimpleSpanProcessor(json_lines_exporter(path)))
    trace.set_tracer_provider(provider)
    _provider = provider
    atexit.register(shutdown)


def shutdown() -> None:
    """Flush and stop exporting (end of a process)."""
    global _provider
    if _provider is not None:
        provider, _provider = _provider, None
        provider.shutdown()


def json_lines_exporter(path: Path):
    """A SpanExporter writing each finished span as one JSON line (tests).
    Defined on first use: the SDK is imported only when something records."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesExporter(SpanExporter):
        def __init__(self):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the process's life
            self._lock = threading.Lock()

        def export(self, spans):
            with self._lock:
                for span in spans:
                    self._file.write(json.dumps(json.loads(span.to_json())) + "\n")
                self._file.flush()
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            with self._lock:
                self._file.close()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return JsonLinesExporter()


# ---------------------------------------------------------------- propagation

def carrier() -> dict[str, str]:
    """The current request id and trace context, as headers (for a job document
    or a message)."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    rid = request_id.current()
    if rid:
        headers[request_id.HEADER] = rid
    return headers


@contextlib.contextmanager
def resumed(saved: Mapping[str, str] | None) -> Iterator[None]:
    """Continue the request `saved` by carrier() (e.g. on a job), if any."""
    if not saved:
        yield
        return
    token = otel_context.attach(propagate.extract(dict(saved)))
    try:
        with request_id.bound(request_id.valid(saved.get(request_id.HEADER)) or None):
            yield
    finally:
        otel_context.detach(token)


@contextlib.contextmanager
def producing(queue: str, job_id: str) -> Iterator[dict[str, str]]:
    """A PRODUCER span around one publish; yields the headers the message
    must carry (request id and traceparent). Raising in the block marks it failed."""
    attributes = {"messaging.system": "rabbitmq", "messaging.destination.name": queue,
                  "messaging.operation.type": "send", "messaging.message.id": job_id}
    with tracer().start_as_current_span(f"send {queue}", kind=SpanKind.PRODUCER,
                                        attributes=attributes):
        yield carrier()


@contextlib.contextmanager
def consuming(headers: Mapping | None, queue: str, job_id: str = "") -> Iterator[trace.Span]:
    """A CONSUMER span for one delivery, child of its publish, with the
    message's request id bound (a new one if it has none)."""
    headers = {k: v.decode() if isinstance(v, bytes) else v
               for k, v in (headers or {}).items() if isinstance(v, str | bytes)}
    parent = propagate.extract(headers)
    rid = request_id.valid(headers.get(request_id.HEADER)) or request_id.new()
    attributes = {"messaging.system": "rabbitmq", "messaging.destination.name": queue,
                  "messaging.operation.type": "process", "video2mp3.request_id": rid}
    if job_id:
        attributes["messaging.message.id"] = job_id
    with request_id.bound(rid), tracer().start_as_current_span(
            f"process {queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes) as span:
        yield span


def fail(span: trace.Span, message: str) -> None:
    span.set_status(Status(StatusCode.ERROR, message))


# ---------------------------------------------------------------- gRPC clients

def client_channel(target: str, *, options=None) -> grpc.Channel:
    """An insecure channel whose calls get CLIENT spans (health checks excepted)
    and carry the current request id."""
    from grpc_interceptor import ClientCallDetails, ClientInterceptor
    from opentelemetry.instrumentation.grpc import client_interceptor, filters, grpcext

    class _RequestId(ClientInterceptor):
        def intercept(self, method, request_or_iterator, call_details):
            rid = request_id.current()
            if rid and not any(k == request_id.HEADER for k, _ in call_details.metadata or ()):
                d = call_details
                call_details = ClientCallDetails(d.method, d.timeout,
                                                 [*(d.metadata or ()), (request_id.HEADER, rid)],
                                                 d.credentials, d.wait_for_ready, d.compression)
            return method(request_or_iterator, call_details)

    channel = grpc.insecure_channel(target, options=options)
    spans = client_interceptor(filter_=filters.negate(filters.service_name(HEALTH_SERVICE)))
    # The span's interceptor is of the instrumentation's own kind (grpcext).
    return grpc.intercept_channel(grpcext.intercept_channel(channel, spans), _RequestId())
