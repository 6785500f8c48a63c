"""The OpenAPI document: generated from the protos, valid, its special cases documented, and where
Envoy finds it."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from openapi_spec_validator import validate

import testkit

ROOT = testkit.ROOT
DOCUMENT = ROOT / "gen" / "openapi.json"


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(DOCUMENT.read_text(encoding="utf-8"))

def _all_bindings(fds):
    from google.api import annotations_pb2

    for f in fds.file:
        for service in f.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                for r in [rule, *rule.additional_bindings]:
                    kind = r.WhichOneof("pattern")
                    if kind == "custom":  # tus: HEAD and OPTIONS
                        yield r.custom.kind.lower(), r.custom.path, r.body
                    elif kind:
                        yield kind, getattr(r, kind), r.body


def test_the_document_is_valid_openapi(document):
    validate(document)
    assert document["openapi"].startswith("3.0")


def test_the_document_is_generated_from_the_protos(document, tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    import openapi

    openapi.main(str(ROOT / "gen" / "descriptor.pb"), str(tmp_path / "openapi.json"))
    assert json.loads((tmp_path / "openapi.json").read_text()) == document
    # Every google.api.http binding is an operation.
    fds = descriptor_pb2.FileDescriptorSet.FromString((ROOT / "gen" / "descriptor.pb").read_bytes())
    bindings = {(verb, re.sub(r"=[^}]*", "", path)) for verb, path, _ in _all_bindings(fds)}
    documented = {(verb, path) for path, ops in document["paths"].items() for verb in ops}
    assert documented == bindings
    assert {"/v1/login", "/login", "/v1/videos", "/upload", "/v1/jobs/{job_id}/mp3", "/download",
            "/health"} <= set(document["paths"])


def test_the_special_cases_are_documented(document):
    paths = document["paths"]
    for path, verb in (("/v1/users", "post"), ("/v1/login", "post"), ("/login", "post"),
                       ("/.well-known/jwks.json", "get"), ("/health", "get")):
        assert paths[path][verb]["security"] in ([], [{"basicAuth": []}]), path    # no token needed
    for path in ("/v1/users", "/v1/login", "/login"):                          # Envoy's edge limit
        assert paths[path]["post"]["responses"]["429"]["headers"]["Retry-After"]["required"]
    for path in ("/v1/jobs/{job_id}/mp3", "/download"):
        assert {"409", "410"} <= set(paths[path]["get"]["responses"])
    watch = paths["/v1/jobs/{job_id}:watch"]["get"]["responses"]["200"]["content"]["application/json"]
    assert watch["schema"]["type"] == "array"
    assert watch["schema"]["items"] == {"$ref": "#/components/schemas/video2mp3.media.v1.Job"}
    for path in ("/v1/jobs/{job_id}", "/v1/me"):
        assert paths[path]["delete"]["responses"]["200"]["content"]["application/json"]["schema"][
            "maxProperties"] == 0
    assert paths["/health"]["get"]["responses"]["503"]


def test_envoy_config_points_at_the_document_by_absolute_path():
    from video2mp3.ops import envoy_config

    cfg = envoy_config.build()
    route = next(r for host in cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                 ["typed_config"]["route_config"]["virtual_hosts"] for r in host["routes"]
                 if r["match"].get("path") == "/openapi.json")
    path = Path(route["direct_response"]["body"]["filename"])
    assert path.is_absolute()
    assert path == DOCUMENT
    assert "COPY --from=build /out/openapi.json /etc/envoy/openapi.json" in (
        ROOT / "deploy" / "docker" / "Dockerfile").read_text()


def test_tus_and_webhooks_are_documented(document):
    """tus lives in headers and statuses the protos cannot carry: the table in
    tools/openapi.py adds them (docs/webhooks-and-uploads.md)."""
    paths = document["paths"]
    assert paths["/v1/uploads"]["options"]["security"] == []
    assert set(paths["/v1/uploads"]["options"]["responses"]["204"]["headers"]) >= {"Tus-Version", "Tus-Extension",
                                                                                   "Tus-Max-Size"}
    create = paths["/v1/uploads"]["post"]
    assert {p["name"] for p in create["parameters"] if p["in"] == "header"} == {
        "Tus-Resumable", "Upload-Length", "Upload-Metadata"}
    assert "Location" in create["responses"]["201"]["headers"]
    assert "413" in create["responses"]
    one = paths["/v1/uploads/{upload_id}"]
    assert "content" not in one["head"]["responses"]["200"]  # a HEAD answer has no body
    assert "Upload-Offset" in one["head"]["responses"]["200"]["headers"]
    patch = one["patch"]
    assert set(patch["requestBody"]["content"]) == {"application/offset+octet-stream"}
    assert {"204", "409", "410", "412", "413", "415", "423"} <= set(patch["responses"])
    assert "204" in one["delete"]["responses"]
    assert {"/v1/webhooks", "/v1/webhooks/{webhook_id}", "/v1/webhooks/{webhook_id}/deliveries",
            "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}:redeliver"} <= set(paths)
