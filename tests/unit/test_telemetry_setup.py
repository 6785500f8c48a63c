"""Logging and telemetry set-up in a process of its own: JSON lines by default, no tracing SDK without
an endpoint, the converter's multiprocess metrics directory."""
from __future__ import annotations

import json

import testkit

ROOT = testkit.ROOT


def _run(code: str, **env) -> str:
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACE_", "LOG_"))}
    r = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout + r.stderr


TRACING_PROBE = """
import sys
from opentelemetry import trace
from video2mp3.telemetry import tracing
tracing.setup_tracing("x")
print(type(trace.get_tracer_provider()).__name__, "opentelemetry.sdk" in sys.modules)
"""


LOGGING_PROBE = """
import logging
from video2mp3.core import request_id
from video2mp3.core.logging import setup_logging
setup_logging("gateway", worker=3)
with request_id.bound("rid-1", job_id="job-1"):
    logging.getLogger("t").info("hello %s", "there", extra={"step": "queued"})
"""


def test_without_an_otlp_endpoint_no_tracing_sdk_is_loaded():
    assert _run(TRACING_PROBE).split() == ["ProxyTracerProvider", "False"]
    out = _run(TRACING_PROBE, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert out.split()[:2] == ["TracerProvider", "True"]


def test_the_converter_supervisor_sets_its_multiprocess_dir_before_prometheus_client_loads():
    """converter/__main__.py sets PROMETHEUS_MULTIPROC_DIR after loading its
    config; if anything the config imports loads prometheus_client first, the
    supervisor's own series (video2mp3_dependency_up...) silently vanish."""
    probe = "import sys, video2mp3.converter.config\nprint('prometheus_client' in sys.modules)"
    assert _run(probe).split() == ["False"]


def test_log_lines_are_json_by_default_and_text_on_request():
    (line,) = [x for x in _run(LOGGING_PROBE).splitlines() if x]
    entry = json.loads(line)
    assert entry["message"] == "hello there"
    assert entry["level"] == "INFO"
    assert entry["service"] == "gateway"
    assert (entry["request_id"], entry["job_id"], entry["worker"], entry["step"]) == ("rid-1", "job-1", 3, "queued")
    assert entry["time"].endswith("+00:00")
    (line,) = [x for x in _run(LOGGING_PROBE, LOG_FORMAT="text").splitlines() if x]
    assert line.endswith("gateway[3] INFO t: hello there [request_id=rid-1 job_id=job-1]"), line
