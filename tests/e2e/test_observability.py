"""Metrics, logs and traces, end to end, on a mesh of its own (so counters
move only by what these tests do):

- one upload through Envoy moves every service's counters by the expected
  amounts (scraped before and after, the converter's summed over its workers);
- the Grafana dashboard and the alert rules only name metrics a live scrape has;
- the upload's request id goes from Envoy's access log through the gateway's
  log lines to the converter's, every line is one JSON object;
- its spans (the test's client span, then the gateway, the publish, the
  consume and the conversion) form one trace.
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import grpc
import pytest
import yaml
from opentelemetry.instrumentation.grpc import client_interceptor, grpcext
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import testkit
from localmesh.processes import wait_for
from testkit.clients import GrpcClient
from testkit.prom import Scrape, metric_names, scrape
from video2mp3.gateway import container_sniff
from video2mp3.media.v1 import media_pb2

ROOT = testkit.ROOT
DASHBOARD = ROOT / "deploy" / "grafana" / "video2mp3.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
UPLOAD = "/video2mp3.media.v1.MediaService/UploadVideo"
# Series Prometheus makes itself for every target, not exported by anyone.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds"}


def scrape_all(stack) -> dict[str, Scrape]:
    return {name: scrape(url) for name, url in stack.metrics_urls.items()}


@pytest.fixture(scope="module")
def journey(module_mesh_factory, clip, tmp_path_factory):
    """One traced gRPC upload through Envoy, converted; the scrapes around it."""
    spans_dir = tmp_path_factory.mktemp("spans")
    stack = module_mesh_factory(TRACE_SPANS_DIR=spans_dir, JOB_STATS_INTERVAL_S="0.3",
                                CONVERTER_CHECK_INTERVAL_S="0.3", CONVERTER_WORKERS="2")
    assert set(stack.metrics_urls) == {"auth", "gateway", "converter", "envoy"}
    # Every service has seen every dependency up (the gateway's first look at
    # auth may have been before auth was serving).
    deps = {"auth": ("mysql",), "gateway": ("mongodb", "rabbitmq", "mysql"), "converter": ("mongodb", "rabbitmq")}
    wait_for("dependency checks", lambda: all(
        scrape(stack.metrics_urls[n]).value("video2mp3_dependency_up", dependency=d) == 1
        for n, ds in deps.items() for d in ds), timeout=30)
    before = scrape_all(stack)

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    channel = grpcext.intercept_channel(grpc.insecure_channel(stack.envoy_addr),
                                        client_interceptor(tracer_provider=provider))
    client = GrpcClient(stack.envoy_addr, channel=channel)
    client.sign_up_and_login()
    with provider.get_tracer("test").start_as_current_span("test upload") as root:
        job = client.upload(clip, filename="traced.mp4")
    done = client.wait(job.job_id)
    assert done.state == media_pb2.JOB_STATE_DONE, done.error
    with pytest.raises(grpc.RpcError) as missing:  # an error status is counted under its code
        client.media.GetJob(media_pb2.GetJobRequest(job_id="no-such-job"), metadata=client.md, timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    # Gauges are read periodically, counters at once: wait until they settle.
    def settled():
        now = scrape_all(stack)
        ok = (now["gateway"].value("video2mp3_jobs", state="DONE") >= 1
              and now["converter"].value("video2mp3_queue_acks_total")
              >= before["converter"].value("video2mp3_queue_acks_total") + 1
              and now["converter"].value("video2mp3_converter_busy_workers") == 0
              # A round of the job stats may have run between the job's
              # creation and its publish's confirmation: the next one counts
              # it no more. (The store is the session's: other tests' jobs
              # waiting for their user's turn may be counted, before and after.)
              and now["gateway"].value("video2mp3_outbox_backlog")
              <= before["gateway"].value("video2mp3_outbox_backlog"))
        return now if ok else None

    after = wait_for("metrics to settle", settled, timeout=30)
    time.sleep(1)  # Envoy's access log is flushed every 0.5 s
    return dict(stack=stack, job=done, clip=clip, size=Path(clip).stat().st_size, before=before, after=after,
                spans_dir=spans_dir, client_spans=exporter.get_finished_spans(),
                trace_id=format(root.get_span_context().trace_id, "032x"))


def delta(journey, service: str, name: str, **labels) -> float:
    return journey["after"][service].value(name, **labels) - journey["before"][service].value(name, **labels)


# ------------------------------------------------------------------ metrics

def test_one_upload_moves_each_counter_by_what_it_did(journey):
    size = journey["size"]
    d = lambda *a, **kw: delta(journey, *a, **kw)  # noqa: E731

    # auth: the sign-up and the login.
    for method in ("SignUp", "Login"):
        assert d("auth", "video2mp3_grpc_server_handled_total", grpc_method=method, grpc_code="OK") == 1
    assert journey["after"]["auth"].value("video2mp3_dependency_up", dependency="mysql") == 1

    # gateway: one upload of `size` bytes, one task published and confirmed.
    assert d("gateway", "video2mp3_grpc_server_handled_total", grpc_method="UploadVideo", grpc_code="OK") == 1
    assert d("gateway", "video2mp3_grpc_server_handled_total", grpc_method="GetJob", grpc_code="NOT_FOUND") == 1
    assert d("gateway", "video2mp3_grpc_server_handling_seconds_count", grpc_method="UploadVideo") == 1
    assert d("gateway", "video2mp3_upload_bytes_total") == size
    assert d("gateway", "video2mp3_upload_duration_seconds_count") == 1
    with open(journey["clip"], "rb") as f:  # converted as it arrived, or after
        streamed = container_sniff.streamable(f.read(container_sniff.SNIFF_BYTES))
    assert d("gateway", "video2mp3_uploads_total", conversion="while_uploading") == int(streamed)
    assert d("gateway", "video2mp3_uploads_total", conversion="after_upload") == int(not streamed)
    assert d("gateway", "video2mp3_queue_publishes_total", kind="task") == 1
    assert d("gateway", "video2mp3_queue_confirms_total", kind="task") == 1
    assert d("gateway", "video2mp3_queue_publish_failures_total") == 0
    gw = journey["after"]["gateway"]
    assert gw.value("video2mp3_jobs", state="DONE") >= 1
    # This upload left no backlog (the session's other jobs may still wait their turn).
    assert gw.value("video2mp3_outbox_backlog") <= journey["before"]["gateway"].value("video2mp3_outbox_backlog")
    if gw.value("video2mp3_outbox_backlog") == 0:
        assert gw.value("video2mp3_outbox_oldest_age_seconds") == 0
    for dep in ("mongodb", "rabbitmq", "mysql"):
        assert gw.value("video2mp3_dependency_up", dependency=dep) == 1, dep

    # converter (two workers, summed): one conversion, its input read once, one ack.
    assert d("converter", "video2mp3_conversions_total", outcome="done") == 1
    assert d("converter", "video2mp3_conversions_total") == 1
    assert d("converter", "video2mp3_conversion_seconds_count") == 1
    assert d("converter", "video2mp3_conversion_realtime_factor_count") == 1
    audio = d("converter", "video2mp3_conversion_audio_seconds_total")
    assert abs(audio - 2.0) < 0.1, audio
    read = d("converter", "video2mp3_gridfs_read_bytes_total")
    assert size * 0.5 <= read <= size * 2, (read, size)
    assert d("converter", "video2mp3_conversion_read_bytes_sum") == read
    # 2 s of audio is one encoder's segment: nothing to join (tests/faults/test_big_files.py joins).
    for result in ("joined", "fallback"):
        assert d("converter", "video2mp3_conversion_encoder_joins_total", result=result) == 0
    assert d("converter", "video2mp3_queue_acks_total") == 1
    assert d("converter", "video2mp3_queue_nacks_total") == 0
    assert d("converter", "video2mp3_queue_redeliveries_total") == 0
    conv = journey["after"]["converter"]
    assert conv.value("video2mp3_converter_busy_workers") == 0
    for dep in ("mongodb", "rabbitmq"):
        assert conv.value("video2mp3_dependency_up", dependency=dep) == 1, dep
    queue = journey["stack"].env["QUEUE_NAME"]
    assert conv.value("video2mp3_queue_messages", queue=queue) == 0
    assert conv.value("video2mp3_queue_consumers", queue=queue) == 2  # one per worker

    # Envoy: the upload (and the polls) went to the media cluster.
    assert d("envoy", "envoy_cluster_upstream_rq_total", envoy_cluster_name="media") >= 2
    assert d("envoy", "envoy_cluster_upstream_rq_total", envoy_cluster_name="auth") == 2


def test_converter_metrics_add_up_across_restarted_workers(journey):
    """A worker killed is marked dead: its counters stay in the sum, the
    restart is counted, and its live gauges are gone."""
    import os
    import signal

    stack = journey["stack"]
    before = scrape(stack.metrics_urls["converter"])
    os.kill(stack.converter_workers()[0], signal.SIGKILL)
    after = wait_for("the worker to be replaced", lambda: (
        s := scrape(stack.metrics_urls["converter"])).value("video2mp3_converter_worker_restarts_total")
        == before.value("video2mp3_converter_worker_restarts_total") + 1 and s, timeout=30)
    assert after.value("video2mp3_conversions_total") == before.value("video2mp3_conversions_total")
    assert after.value("video2mp3_queue_acks_total") == before.value("video2mp3_queue_acks_total")
    wait_for("two workers consuming again", lambda: len(stack.converter_workers()) == 2, timeout=30)


def test_envoy_metrics_port_serves_stats_and_ready_only(journey):
    import requests

    base = journey["stack"].metrics_urls["envoy"].removesuffix("/stats/prometheus")
    assert requests.get(f"{base}/ready", timeout=5).text.strip() == "LIVE"
    for path in ("/quitquitquit", "/config_dump", "/stats", "/clusters"):
        assert requests.post(f"{base}{path}", timeout=5).status_code == 404, path
    assert journey["stack"].child("envoy").alive


def _exported(journey) -> set[str]:
    return set().union(*(s.names for s in journey["after"].values())) | PROMETHEUS_OWN


def test_dashboard_queries_name_only_exported_metrics(journey):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    exported = _exported(journey)
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, (expr, names - exported)
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "queue", "latency", "error", "dependenc"):
        assert topic in titles, topic


def test_alert_rules_name_only_exported_metrics(journey):
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert len(rules) >= 5
    exported = _exported(journey)
    for rule in rules:
        assert rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert "runbook" in rule["annotations"]
        names = metric_names(rule["expr"])
        assert names, (rule["alert"], names - exported)
        assert names <= exported, (rule["alert"], names - exported)


# ------------------------------------------------------------------ logs

def _json_lines(path: Path) -> list[dict]:
    """Every line of a service log is one JSON object (the launcher's own
    `====` markers aside)."""
    out = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("====") or "[mesh]" in line:
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            pytest.fail(f"{path.name}: not a JSON line: {line!r}")
    return out


def _envoy_access(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_request_id_follows_the_upload_from_envoy_to_the_converter(journey):
    stack, job_id = journey["stack"], journey["job"].job_id
    access = [e for e in _envoy_access(stack.logs["envoy"]) if e["grpc_path"] == UPLOAD]
    assert len(access) == 1, access
    rid = access[0]["request_id"]
    assert rid
    assert access[0]["status"] == 200
    assert access[0]["grpc_status"] == "OK"

    logs = {name: _json_lines(stack.logs[name]) for name in ("auth", "gateway", "converter")}
    for name, lines in logs.items():
        for line in lines:
            assert {"time", "level", "service", "logger", "message"} <= set(line), line
            assert line["service"] == name, line

    gateway = [line for line in logs["gateway"] if line.get("request_id") == rid]
    rpc = [line for line in gateway if line.get("grpc_method") == UPLOAD]
    assert len(rpc) == 1
    assert rpc[0]["grpc_code"] == "OK"
    assert rpc[0]["duration_ms"] > 0
    assert {"recorded", "queued"} <= {line.get("step") for line in gateway}
    assert all(line.get("job_id") == job_id for line in gateway if line.get("step"))

    converter = [line for line in logs["converter"] if line.get("request_id") == rid]
    assert any(line.get("step") == "converting" for line in converter), converter
    done = [line for line in converter if line.get("step") == "done"]
    assert len(done) == 1
    assert done[0]["job_id"] == job_id
    assert "worker" in done[0]
    # What a benchmark reads from the logs: bytes fetched from GridFS, the video's size.
    assert done[0]["video_bytes"] == journey["size"] > 0
    assert 0 < done[0]["read_bytes"] <= 2 * done[0]["video_bytes"]
    # ...and no other request's lines carry it.
    for name in ("auth", "converter"):
        assert all(line.get("job_id") in (None, job_id) for line in logs[name] if line.get("request_id") == rid)


# ------------------------------------------------------------------ traces

def _spans(journey) -> list[dict]:
    spans = []
    for path in sorted(journey["spans_dir"].glob("*.jsonl")):
        spans += [json.loads(line) for line in path.read_text().splitlines()]
    for s in journey["client_spans"]:
        spans.append(json.loads(s.to_json()))
    return spans


def test_the_uploads_spans_form_one_trace(journey):
    trace_id = "0x" + journey["trace_id"]
    spans = [s for s in _spans(journey) if s["context"]["trace_id"] == trace_id]
    by_id = {s["context"]["span_id"]: s for s in spans}

    def one(name: str, kind: str, service: str | None = None) -> dict:
        found = [s for s in spans if s["name"] == name and s["kind"] == f"SpanKind.{kind}"
                 and (service is None or s["resource"]["attributes"]["service.name"] == service)]
        assert len(found) == 1, (name, kind, [(s["name"], s["kind"]) for s in spans])
        return found[0]

    root = one("test upload", "INTERNAL")
    client = one(UPLOAD, "CLIENT")  # the instrumentation's name, with its slash
    server = one(UPLOAD.lstrip("/"), "SERVER", "gateway")
    queue = journey["stack"].env["QUEUE_NAME"]
    publish = one(f"send {queue}", "PRODUCER", "gateway")
    consume = one(f"process {queue}", "CONSUMER", "converter")
    convert = one("convert", "INTERNAL", "converter")
    chain = [root, client, server, publish, consume, convert]
    for parent, child in itertools.pairwise(chain):
        assert child["parent_id"] == parent["context"]["span_id"], (child["name"], parent["name"])
    assert root["parent_id"] is None
    assert all(s["parent_id"] in by_id for s in chain[1:])
    assert server["attributes"]["rpc.grpc.status_code"] == 0
    assert convert["attributes"]["video2mp3.job_id"] == journey["job"].job_id
    assert convert["attributes"]["video2mp3.read_bytes"] == journey["size"]  # one chunk, fetched once
    assert consume["attributes"]["video2mp3.request_id"] == server["attributes"]["video2mp3.request_id"]
