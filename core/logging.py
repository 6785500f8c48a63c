"""One log format for every service.

LOG_FORMAT=json (the default; containers): one JSON object per line with
time, level, service, logger, message, and whichever of request_id, job_id,
trace_id, span_id apply, plus any `extra=` fields. LOG_FORMAT=text (what
`make run` uses): the same as one readable line.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Literal

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from video2mp3.core import request_id
from video2mp3.core.settings import load, setting


@dataclasses.dataclass(frozen=True)
class LogSettings:
    level: Literal["CRITICAL", "FATAL", "ERROR", "WARN", "WARNING", "INFO", "DEBUG", "NOTSET"] = \
        setting("LOG_LEVEL", "INFO", help="logging level; `DEBUG` also logs health checks and reflection calls")
    format: Literal["json", "text"] = setting("LOG_FORMAT", "json", help=(
        "`json`: one JSON object per line; `text`: a readable line (`make run` sets it)"))


CONTEXT_FIELDS = ("request_id", "job_id", "trace_id", "span_id")


class ContextFilter(logging.Filter):
    """Adds the request id, job id and current trace to each record (when set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid, job = request_id.current(), request_id.current_job()
        if rid and not hasattr(record, "request_id"):
            record.request_id = rid
        if job and not hasattr(record, "job_id"):
            record.job_id = job
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        return True


class TextFormatter(logging.Formatter):
    """The plain line, then the request id and job id if there are any."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{k}={getattr(record, k)}" for k in ("request_id", "job_id") if getattr(record, k, None)]
        return f"{line} [{' '.join(ids)}]" if ids else line


def setup_logging(service: str, **static: object) -> None:
    """`static`: fields on every line of this process (e.g. worker=0)."""
    s = load(LogSettings)
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if s.format == "json":
        handler.setFormatter(JsonFormatter(
            "{levelname}{name}{message}", style="{", timestamp="time",
            rename_fields={"levelname": "level", "name": "logger"},
            static_fields={"service": service, **static}))
    else:
        label = service + "".join(f"[{v}]" for v in static.values())
        handler.setFormatter(TextFormatter(f"%(asctime)s {label} %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=s.level, handlers=[handler], force=True)
    # pika logs every reconnect attempt at WARNING with a traceback; our own
    # code logs one line per outage instead.
    logging.getLogger("pika").setLevel(max(logging.getLevelName(s.level), logging.ERROR))
