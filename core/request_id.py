"""The request id (and job id) every log line of a request or job carries.

Envoy gives each request an `x-request-id`; it reaches the gateway as gRPC
metadata, is stored on the job and travels in the task message's AMQP headers
to the converter (telemetry/tracing.py). Within a process it lives in context
variables: rpc/observe.py binds it for each RPC, the converter's consumer
for each delivery, and core/logging.py adds it to every line.
"""
from __future__ import annotations

import contextlib
import contextvars
import re
import uuid
from collections.abc import Iterable, Iterator

HEADER = "x-request-id"

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
_job_id: contextvars.ContextVar[str] = contextvars.ContextVar("job_id", default="")

# What we accept from outside: a UUID fits, a log-injection attempt does not.
_VALID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def new() -> str:
    return str(uuid.uuid4())


def valid(value) -> str:
    """`value` if it is usable as a request id, else ''."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value if isinstance(value, str) and _VALID.match(value) else ""


def from_metadata(metadata: Iterable[tuple[str, object]] | None) -> str:
    for key, value in metadata or ():
        if key == HEADER:
            return valid(value)
    return ""


def current() -> str:
    return _request_id.get()


def current_job() -> str:
    return _job_id.get()


@contextlib.contextmanager
def bound(request_id: str | None = None, *, job_id: str | None = None) -> Iterator[None]:
    """Within the block, log lines carry these ids (None keeps the current one)."""
    tokens = []
    if request_id is not None:
        tokens.append((_request_id, _request_id.set(request_id)))
    if job_id is not None:
        tokens.append((_job_id, _job_id.set(job_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
