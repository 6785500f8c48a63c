"""One interceptor that makes every RPC observable (rpc/server.py
installs it outermost, so it sees the final status the error interceptor sets):

- binds the request id: Envoy's `x-request-id`, or a new one for a direct call;
- a SERVER span, child of the caller's `traceparent` (telemetry/tracing.py);
- video2mp3_grpc_server_handled_total / _handling_seconds (telemetry/metrics.py);
- one log line when the RPC ends: method, code, duration, request id
  (health checks and reflection at DEBUG: probes would drown the rest).

A streaming response is produced after the handler returns, so for those the
request id and span are bound again while the stream is iterated, and the RPC
ends with the stream.
"""
from __future__ import annotations

import collections.abc
import contextlib
import logging
import time

import grpc
from grpc_interceptor import ServerInterceptor
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from video2mp3.core import request_id
from video2mp3.telemetry import metrics, tracing

log = logging.getLogger("rpc")

QUIET_SERVICES = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                  "grpc.reflection.v1.ServerReflection"}


class ObserveInterceptor(ServerInterceptor):
    def intercept(self, method, request_or_iterator, context, method_name):
        call = _Call(method_name, context)
        call.enter()
        try:
            response = method(request_or_iterator, context)
        except BaseException as e:
            call.end(e)
            raise
        if isinstance(response, collections.abc.Iterator):
            call.leave()
            return call.stream(response)
        call.end(None)
        return response


class _Call:
    def __init__(self, method_name: str, context):
        self.method_name = method_name
        self.service, _, self.method = method_name.lstrip("/").rpartition("/")
        self.context = context
        metadata = tuple(context.invocation_metadata() or ())
        self.request_id = request_id.from_metadata(metadata) or request_id.new()
        self.quiet = self.service in QUIET_SERVICES
        self.start = time.perf_counter()
        self.span = tracing.tracer().start_span(
            method_name.lstrip("/"), context=propagate.extract(dict(metadata)), kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": self.service, "rpc.method": self.method,
                        "video2mp3.request_id": self.request_id})

    def enter(self) -> None:
        self._rid = request_id.bound(self.request_id)
        self._rid.__enter__()
        self._otel = otel_context.attach(trace.set_span_in_context(self.span))

    def leave(self) -> None:
        otel_context.detach(self._otel)
        # A stream abandoned by its client may be closed by the garbage
        # collector, in another context than it was entered in.
        with contextlib.suppress(ValueError):
            self._rid.__exit__(None, None, None)

    def stream(self, responses):
        self.enter()
        error: BaseException | None = None
        try:
            yield from responses
        except BaseException as e:
            error = e
            raise
        finally:
            self.leave()
            self.end(error, entered=False)

    def end(self, error: BaseException | None, *, entered: bool = True) -> None:
        code = _code(self.context, error)
        seconds = time.perf_counter() - self.start
        metrics.RPC_HANDLED.labels(self.service, self.method, code.name).inc()
        metrics.RPC_SECONDS.labels(self.service, self.method).observe(seconds)
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            self.span.set_status(Status(StatusCode.ERROR, code.name))
        level = logging.DEBUG if self.quiet else (
            logging.WARNING if code in _SERVER_FAULTS else logging.INFO)
        if entered:
            self.leave()
        with request_id.bound(self.request_id), trace.use_span(self.span, end_on_exit=True):
            log.log(level, "rpc %s %s %.1f ms", self.method_name, code.name, seconds * 1000,
                    extra={"grpc_method": self.method_name, "grpc_code": code.name,
                           "duration_ms": round(seconds * 1000, 1), "peer": self.context.peer()})


# Codes that point at the server or its dependencies rather than the request.
_SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN,
                  grpc.StatusCode.DATA_LOSS, grpc.StatusCode.DEADLINE_EXCEEDED}


def _code(context, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        return grpc.StatusCode.OK
    if not context.is_active():
        return grpc.StatusCode.CANCELLED  # the client went away mid-call
    return grpc.StatusCode.UNKNOWN
