"""deploy/envoy.yaml: Envoy accepts it, and it routes and transcodes as the
REST contract says.

The traffic tests run the real Envoy against small in-process gRPC servers
that implement AuthService / MediaService from the generated stubs, so they
pin Envoy's own behaviour (routing by service, snake_case JSON, gRPC errors as
HTTP statuses, streaming uploads and downloads, the x-http-status override)
independently of the real services. The end-to-end tests cover the real ones.
"""
from __future__ import annotations

import subprocess
import threading
from concurrent import futures
from pathlib import Path
from typing import TypedDict

import grpc
import pytest
import requests
import yaml
from google.api import httpbody_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from localmesh.processes import Child, free_port, wait_for_port
from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.core.settings import load
from video2mp3.media.v1 import media_pb2, media_pb2_grpc
from video2mp3.ops import envoy_config

AUTH = "video2mp3.auth.v1.AuthService"
MEDIA = "video2mp3.media.v1.MediaService"
LIMIT = 3_000_000  # the stub's upload limit


def validate(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [envoy_config.envoy_binary(), "--mode", "validate", "-c", str(path),
         "--disable-hot-restart", "--log-level", "error"],
        cwd=envoy_config.ROOT, capture_output=True, text=True, timeout=120,
    )


# ------------------------------------------------------------------ config only

def test_checked_in_config_is_valid_as_is():
    """`envoy -c deploy/envoy.yaml` from the repo root works without rendering."""
    r = validate(envoy_config.TEMPLATE)
    assert r.returncode == 0, r.stdout + r.stderr


def test_rendered_config_is_valid_and_patched(tmp_path):
    listen_port, admin_port = free_port(), free_port()
    path = envoy_config.render(tmp_path / "envoy.yaml", auth=("auth.internal", 6001),
                               media=("media.internal", 6002), listen_port=listen_port, admin_port=admin_port)
    r = validate(path)
    assert r.returncode == 0, r.stdout + r.stderr

    cfg = yaml.safe_load(path.read_text())
    listener = cfg["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener["port_value"] == listen_port
    assert cfg["admin"]["address"]["socket_address"]["port_value"] == admin_port
    endpoints = {
        c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"]
        for c in cfg["static_resources"]["clusters"]
    }
    assert endpoints["auth"] == {"address": "auth.internal", "port_value": 6001}
    assert endpoints["media"] == {"address": "media.internal", "port_value": 6002}
    tc = envoy_config.transcoder(cfg)
    assert tc["proto_descriptor"] == str(envoy_config.DESCRIPTOR)


def test_web_page_routes_are_rendered_with_absolute_paths(tmp_path):
    """The page's files (web/) are served by direct_response routes that read
    them at start-up: rendered as absolute paths (to this checkout's web/ by
    default, or --web-root as in the container image), each with the security
    headers, and without the transcoder (which would 404 them)."""
    served = {"/": "index.html", "/static/app.js": "app.js", "/static/app.css": "app.css",
              "/static/tus.min.js": "tus.min.js"}
    cfg = envoy_config.build()
    routes = envoy_config.web_routes(cfg)
    assert {r["match"]["path"]: r["direct_response"]["body"]["filename"] for r in routes} == {
        path: str(envoy_config.WEB_ROOT / name) for path, name in served.items()}
    for name in served.values():
        assert (envoy_config.WEB_ROOT / name).stat().st_size < 1048576  # max_direct_response_body_size_bytes
    for r in routes:
        headers = {h["header"]["key"]: h["header"]["value"] for h in r["response_headers_to_add"]}
        assert "script-src 'self';" in headers["content-security-policy"]
        assert "'unsafe-inline'" not in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert r["typed_per_filter_config"][envoy_config.TRANSCODER]["disabled"] is True
    # The web routes come before the catch-all to the gateway.
    vhost_routes = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert vhost_routes[: len(routes)] == routes

    image = envoy_config.build(web_root="/etc/envoy/web")
    assert sorted(r["direct_response"]["body"]["filename"] for r in envoy_config.web_routes(image)) == [
        "/etc/envoy/web/app.css", "/etc/envoy/web/app.js", "/etc/envoy/web/index.html",
        "/etc/envoy/web/tus.min.js"]
    # Rendered from elsewhere, Envoy still finds the files.
    path = envoy_config.render(tmp_path / "envoy.yaml", listen_port=free_port(), admin_port=free_port())
    validated = subprocess.run(
        [
            envoy_config.envoy_binary(),
            "--mode",
            "validate",
            "-c",
            str(path),
            "--disable-hot-restart",
            "--log-level",
            "error",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_every_file_envoy_reads_is_resolved_and_shipped_in_the_image():
    """The web page's files (web_root=) and /openapi.json (openapi=) are both
    direct_response bodies read from files: each kind is resolved by its own
    argument, and the Dockerfile renders and copies them all."""
    image = envoy_config.build(web_root="/etc/envoy/web", openapi="/etc/envoy/openapi.json")
    routes = image["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    files = {r["match"]["path"]: r["direct_response"]["body"]["filename"]
             for r in routes if "filename" in r.get("direct_response", {}).get("body", {})}
    assert files == {"/": "/etc/envoy/web/index.html", "/static/app.js": "/etc/envoy/web/app.js",
                     "/static/app.css": "/etc/envoy/web/app.css", "/openapi.json": "/etc/envoy/openapi.json",
                     "/static/tus.min.js": "/etc/envoy/web/tus.min.js"}
    local = envoy_config.build()
    for r in routes:
        if r["match"].get("path") in files:
            assert r["typed_per_filter_config"][envoy_config.TRANSCODER]["disabled"] is True
    local_files = [r["direct_response"]["body"]["filename"]
                   for r in local["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
                       "typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
                   if "filename" in r.get("direct_response", {}).get("body", {})]
    assert len(local_files) == 5
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in local_files)
    text = (envoy_config.ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    assert "--openapi /etc/envoy/openapi.json --web-root /etc/envoy/web" in text
    envoy_stage = text.split("AS envoy", 1)[1]
    assert "COPY --from=build /out/openapi.json /etc/envoy/openapi.json" in envoy_stage
    assert "COPY web/index.html web/app.js web/app.css /etc/envoy/web/" in envoy_stage


def test_dockerfile_ships_the_web_page():
    text = (envoy_config.ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    envoy_stage = text.split("AS envoy", 1)[1]
    assert "COPY web/index.html web/app.js web/app.css /etc/envoy/web/" in envoy_stage
    assert "COPY web/tus.min.js /etc/envoy/web/" in envoy_stage
    assert "--web-root /etc/envoy/web" in text
    ignore = (envoy_config.ROOT / "deploy" / "docker" / "Dockerfile.dockerignore").read_text()
    assert "!web/**" in ignore.splitlines()


def test_transcoder_serves_every_service_in_the_descriptor():
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(envoy_config.DESCRIPTOR.read_bytes())
    ours = {f"{f.package}.{s.name}" for f in fds.file if f.package.startswith("video2mp3.")
            for s in f.service}
    tc = envoy_config.transcoder(envoy_config.load_template())
    assert set(tc["services"]) == ours == {AUTH, MEDIA}
    assert tc["print_options"]["preserve_proto_field_names"] is True
    assert tc["convert_grpc_status"] is True
    # Routes are matched on the gRPC path the transcoder produces.
    assert tc.get("match_incoming_request_route", False) is False


# ------------------------------------------------------------------ live traffic

class _Auth(auth_pb2_grpc.AuthServiceServicer):
    def Login(self, request, context):
        if request.password != "right":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong email or password")
        return auth_pb2.LoginResponse(access_token="t-" + request.email, token_type="Bearer",
                                      expires_in=60, refresh_token="r-" + request.email,
                                      refresh_token_expires_in=1209600, session_id="s-1")


class _Upload(TypedDict):
    """What the stub gateway saw of one UploadVideo."""

    messages: int
    bytes: int
    first: media_pb2.UploadVideoRequest | None
    authorization: str | None


class _Media(media_pb2_grpc.MediaServiceServicer):
    def __init__(self):
        self.uploads: list[_Upload] = []

    def UploadVideo(self, request_iterator, context):
        seen: _Upload = {
            "messages": 0,
            "bytes": 0,
            "first": None,
            "authorization": dict(context.invocation_metadata()).get("authorization"),
        }
        self.uploads.append(seen)
        for msg in request_iterator:
            if seen["first"] is None:
                seen["first"] = msg
            seen["messages"] += 1
            seen["bytes"] += len(msg.body.data)
            if seen["bytes"] > LIMIT:
                context.set_trailing_metadata((("x-http-status", "413"),))
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "upload too large")
        assert seen["first"] is not None
        return media_pb2.Job(job_id="j1", filename=seen["first"].filename,
                             video_size_bytes=seen["bytes"], state=media_pb2.JOB_STATE_QUEUED)

    def GetJob(self, request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")

    def DownloadMp3(self, request, context):
        for i in range(int(request.job_id)):
            yield httpbody_pb2.HttpBody(content_type="audio/mpeg", data=bytes([i % 256]) * 65536)

    def GetHealth(self, request, context):
        return media_pb2.GetHealthResponse(status="healthy")


def _serve(servicer, add, name: str) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    add(servicer, server)
    h = health.HealthServicer()
    h.set("", health_pb2.HealthCheckResponse.SERVING)
    h.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(h, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(scope="module")
def envoy(tmp_path_factory):
    """Envoy from the rendered config in front of two stub servers."""
    tmp = tmp_path_factory.mktemp("envoy")
    media = _Media()
    auth_server, auth_port = _serve(_Auth(), auth_pb2_grpc.add_AuthServiceServicer_to_server, AUTH)
    media_server, media_port = _serve(media, media_pb2_grpc.add_MediaServiceServicer_to_server, MEDIA)
    port = free_port()
    cfg = envoy_config.render(tmp / "envoy.yaml", listen_port=port, admin_port=free_port(),
                              auth=("127.0.0.1", auth_port), media=("127.0.0.1", media_port))
    child = Child("envoy", [envoy_config.envoy_binary(), "-c", cfg, *envoy_config.envoy_args()],
                  log_path=tmp / "envoy.log").start()
    try:
        wait_for_port("127.0.0.1", port, timeout=60, child=child)
        yield {"base": f"http://127.0.0.1:{port}", "addr": f"127.0.0.1:{port}", "media": media,
               "log": child.log_path}
    finally:
        child.stop(10)
        auth_server.stop(0)
        media_server.stop(0)


def test_rest_json_uses_proto_field_names_and_reaches_auth(envoy):
    r = requests.post(f"{envoy['base']}/v1/login", json={"email": "a@b", "password": "right"},
                      timeout=10)
    assert r.status_code == 200, r.text
    # snake_case names, int64 as a JSON string (proto3 JSON mapping)
    assert r.json() == {"access_token": "t-a@b", "token_type": "Bearer", "expires_in": "60",
                        "refresh_token": "r-a@b", "refresh_token_expires_in": "1209600", "session_id": "s-1"}


def test_grpc_errors_become_http_statuses_with_a_status_body(envoy):
    r = requests.post(f"{envoy['base']}/v1/login", json={"email": "a@b", "password": "wrong"},
                      timeout=10)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert r.json()["message"] == "wrong email or password"

    r = requests.get(f"{envoy['base']}/v1/jobs/nope", timeout=10)
    assert r.status_code == 404
    assert r.json()["code"] == 5


def test_unknown_paths_and_query_parameters_are_rejected(envoy):
    assert requests.get(f"{envoy['base']}/v1/nothing", timeout=10).status_code == 404
    assert requests.get(f"{envoy['base']}/v1/jobs/x?colour=red", timeout=10).status_code == 400


def test_rest_upload_streams_in_many_messages(envoy):
    data = b"\x00\x01" * 1_000_000  # 2 MB
    r = requests.post(f"{envoy['base']}/v1/videos",
                      params={"filename": "café x.mp4", "bitrate_kbps": "128"},
                      data=data, headers={"Content-Type": "video/mp4", "Authorization": "Bearer tok"},
                      timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == "café x.mp4"
    seen = envoy["media"].uploads[-1]
    assert seen["bytes"] == len(data)
    assert seen["messages"] > 1  # split as it arrived, not buffered into one
    assert seen["first"].bitrate_kbps == 128
    assert seen["first"].body.content_type == "video/mp4"
    assert seen["authorization"] == "Bearer tok"

    r = requests.post(f"{envoy['base']}/v1/videos?filename=a+b.mp4", data=b"x", timeout=10)
    assert r.json()["filename"] == "a b.mp4"


def test_over_limit_upload_is_413_for_rest_and_resource_exhausted_for_grpc(envoy):
    def body():  # far more than the limit; the answer must come long before the end
        for _ in range(200):
            yield b"\x00" * 1_000_000

    r = requests.post(f"{envoy['base']}/v1/videos?filename=big.mp4", data=body(), timeout=30)
    assert r.status_code == 413, r.text
    assert "x-http-status" not in r.headers
    assert envoy["media"].uploads[-1]["bytes"] < 50_000_000

    def messages():
        yield media_pb2.UploadVideoRequest(filename="big.mp4")
        for _ in range(200):
            yield media_pb2.UploadVideoRequest(body=httpbody_pb2.HttpBody(data=b"\x00" * 1_000_000))

    with grpc.insecure_channel(envoy["addr"]) as ch, pytest.raises(grpc.RpcError) as e:
        media_pb2_grpc.MediaServiceStub(ch).UploadVideo(messages(), timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_download_streams_back_as_audio_mpeg(envoy):
    with requests.get(f"{envoy['base']}/v1/jobs/40/mp3", stream=True, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "audio/mpeg"
        assert "content-length" not in r.headers  # chunked, not buffered
        body = b"".join(r.iter_content(65536))
    assert body == b"".join(bytes([i]) * 65536 for i in range(40))


def test_native_grpc_passes_through_routed_by_service(envoy):
    with grpc.insecure_channel(envoy["addr"]) as ch:
        reply = auth_pb2_grpc.AuthServiceStub(ch).Login(
            auth_pb2.LoginRequest(email="g@b", password="right"), timeout=10)
        assert reply.access_token == "t-g@b"
        # grpc.health.v1 goes to the gateway (media) cluster
        hc = health_pb2_grpc.HealthStub(ch)
        assert hc.Check(health_pb2.HealthCheckRequest(service=MEDIA), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            hc.Check(health_pb2.HealthCheckRequest(service=AUTH), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_concurrent_rest_and_grpc_share_the_listener(envoy):
    errors = []

    def rest():
        try:
            r = requests.get(f"{envoy['base']}/health", timeout=10)
            assert r.status_code == 200
            assert r.json()["status"] == "healthy"
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=rest) for _ in range(8)]
    for t in threads:
        t.start()
    with grpc.insecure_channel(envoy["addr"]) as ch:
        assert media_pb2_grpc.MediaServiceStub(ch).GetHealth(
            media_pb2.GetHealthRequest(), timeout=10).status == "healthy"
    for t in threads:
        t.join()
    assert not errors


def test_edge_limits_are_configurable():
    assert set(envoy_config.edge_limits(envoy_config.load_template())) == {"Login", "SignUp"}
    cfg = envoy_config.build(limits={"Login": (3, 60), "SignUp": (2, 0.5)})
    limits = envoy_config.edge_limits(cfg)
    assert limits["Login"]["token_bucket"] == {"max_tokens": 3, "tokens_per_fill": 3, "fill_interval": "60s"}
    assert limits["Login"]["response_headers_to_add"][0]["header"] == {"key": "retry-after", "value": "60"}
    assert limits["SignUp"]["token_bucket"]["fill_interval"] == "0.5s"
    assert load(envoy_config.EnvoySettings, {"ENVOY_LOGIN_LIMIT": "5/10"}).rate_limits() == {"Login": (5, 10.0)}
    with pytest.raises(SystemExit, match="ENVOY_SIGNUP_LIMIT"):
        load(envoy_config.EnvoySettings, {"ENVOY_SIGNUP_LIMIT": "lots"}).rate_limits()
    with pytest.raises(KeyError):
        envoy_config.build(limits={"GetMe": (1, 1)})
