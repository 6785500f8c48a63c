"""The OpenAPI document (gen/openapi.json, generated from the protos by
tools/openapi.py): a valid OpenAPI 3.0 document, served by Envoy at
/openapi.json, and true to what the mesh answers: schemathesis fuzzes every
operation on a mesh of its own, and no answer may be a 5xx, differ from the
document (status, content type, headers, body schema) or leave a traceback in
a service's log."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

import testkit
from testkit import testbed
from testkit.clients import RestClient

ROOT = testkit.ROOT
DOCUMENT = ROOT / "gen" / "openapi.json"
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
# Response conformance (the document is the contract) and no server errors.
# positive_data_acceptance / negative_data_rejection are left out: the protos
# cannot say what the services validate (an email's shape, a password's
# length, which job ids exist), so schema-valid requests are rightly refused.
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance")


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(DOCUMENT.read_text(encoding="utf-8"))


def test_envoy_serves_the_document(mesh, document):
    r = requests.get(f"{mesh.rest_base_url}/openapi.json", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == document


def test_envoys_own_rest_errors_are_status_json(mesh):
    """Errors Envoy answers itself (unknown path, unknown query parameter, bad
    JSON) have the same google.rpc.Status body as the services' errors."""
    base = mesh.rest_base_url
    for r, code in ((requests.get(f"{base}/nothing", timeout=10), 404),
                    (requests.get(f"{base}/v1/jobs?bogus=1", timeout=10), 400),
                    (requests.post(f"{base}/v1/users", data="notjson", timeout=10), 400)):
        assert r.status_code == code
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert isinstance(body["code"], int), body
        assert body["code"] in (3, 5), body
        assert body["message"], body


@pytest.fixture
def own_mysql_db(mysql_server):
    """A MySQL database for the fuzzed mesh alone: the fuzzer's many failed
    logins from 127.0.0.1 count against that address (auth's login limits,
    kept in MySQL), which must not block the other tests' logins."""
    name = f"v2m_fuzz_{uuid.uuid4().hex[:12]}"
    yield testbed.create_mysql_db(mysql_server, name)
    testbed.drop_mysql_db(mysql_server, name)


def test_fuzzing_the_rest_api_finds_nothing(mesh_factory, own_mysql_db, tmp_path):
    stack = mesh_factory(MYSQL_DB=own_mysql_db["MYSQL_DB"])
    rest = RestClient(stack.rest_base_url)
    rest.sign_up_and_login()
    report = tmp_path / "report"
    r = subprocess.run(
        [SCHEMATHESIS, "run", str(DOCUMENT), "--url", stack.rest_base_url,
         "-H", f"Authorization: Bearer {rest.token}", "--checks", CHECKS,
         "--max-examples", os.environ.get("FUZZ_MAX_EXAMPLES", "15"), "--seed", "1",
         # One worker: with two, Hypothesis's lambda repr calls ast.parse from
         # two threads and Python 3.11.7 fails that (SystemError, CPython gh-106905).
         "--workers", "1", "--request-timeout", "30", "--no-shrink", "--suppress-health-check", "all",
         # DELETE /v1/me would end the account (and token) the rest of the run
         # uses; tests/e2e/test_accounts.py checks its REST answer.
         "--exclude-operation-id", "AuthService_DeleteMe",
         "--report", "junit", "--report-dir", str(report)],
        # Its crash cache (.schemathesis/) and example database go to the
        # test's own directory, never into the checkout.
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        # testkit/schemathesis_hooks.py: how to send a tus PATCH body.
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": "testkit.schemathesis_hooks",
             "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    output = r.stdout + r.stderr
    assert r.returncode == 0, output[-8000:]
    for name, log in stack.logs.items():
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, f"{name} logged a traceback:\n{text[-4000:]}"
    for name in ("auth", "gateway", "converter", "envoy"):
        assert stack.children[name].alive, f"{name} died"


