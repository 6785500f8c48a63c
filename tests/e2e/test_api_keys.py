"""API keys through the real mesh (auth, gateway, Envoy), over REST and gRPC:
created once and shown once, listed without the secret, used as a bearer
credential everywhere a token goes, limited by scopes, refused within the
gateway's documented cache bound once deleted (also while auth is down),
stored only as a hash, and gone with their user's account."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time

import grpc
import pymysql
import pytest

import testkit
from localmesh.processes import wait_for
from testkit.clients import GrpcClient, RestClient, unique_email
from testkit.media import analyse_mp3, make_text_file
from testkit.status import reason, rest_details
from video2mp3.auth.v1 import auth_pb2
from video2mp3.media.v1 import media_pb2

ROOT = testkit.ROOT
# gateway/config.py's API_KEY_CACHE_TTL_S default, which the session mesh runs with.
KEY_CACHE_TTL_S = 2.0
# What a refusal may take beyond the cache's lifetime here: the call to auth and a
# loaded 2-core machine. The measured figure is printed (pytest -s).
SLACK_S = 2.0


def bearer(credential: str) -> dict:
    return {"Authorization": f"Bearer {credential}"}


def md(credential: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {credential}")]


def rest_reason(r) -> str:
    return rest_details(r.json())["ErrorInfo"]["reason"]


@pytest.fixture
def rest(mesh) -> RestClient:
    client = RestClient(mesh.rest_base_url)
    client.sign_up_and_login()
    return client


def create_key(rest: RestClient, name: str = "backup script", scopes: list[str] | None = None) -> dict:
    body: dict = {"display_name": name}
    if scopes is not None:
        body["scopes"] = scopes
    r = rest.s.post(f"{rest.base}/v1/apiKeys", json=body, headers=rest.headers(), timeout=20)
    assert r.status_code == 200, r.text
    return r.json()


def refused_within(what: str, attempt, bound_s: float) -> float:
    """Seconds until attempt() is refused (returns True), polled every 50 ms; fails past the bound."""
    start = time.monotonic()
    wait_for(what, attempt, timeout=bound_s, interval=0.05)
    elapsed = time.monotonic() - start
    print(f"{what}: {elapsed:.2f} s")
    return elapsed


def mysql(mesh):
    e = mesh.env
    return pymysql.connect(
        host=e["MYSQL_HOST"],
        port=int(e["MYSQL_PORT"]),
        user=e["MYSQL_USER"],
        password=e["MYSQL_PASSWORD"],
        database=e["MYSQL_DB"],
        connect_timeout=5,
    )


def test_a_key_is_shown_once_listed_without_its_secret_works_and_revocation_is_quick(rest, clip):
    created = create_key(rest)
    key, info = created["key"], created["api_key"]
    assert key.startswith("v2m_")
    assert len(key) == 47
    assert info["display_name"] == "backup script"
    assert info["scopes"] == []
    assert info["key_prefix"] == key[:8]
    assert info["id"]
    assert info["create_time"]
    assert "last_used_time" not in info

    # Wherever a token goes: auth's own RPCs and the gateway's, reads and writes.
    me = rest.get("/v1/me", token=key)
    assert me.status_code == 200, me.text
    assert me.json()["email"] == rest.get("/v1/me").json()["email"]
    up = rest.upload(clip, token=key)
    assert up.status_code == 200, up.text
    job_id = up.json()["job_id"]
    assert rest.get(f"/v1/jobs/{job_id}").json()["job_id"] == job_id  # the same user's job
    assert job_id in {j["job_id"] for j in rest.get("/v1/jobs", token=key).json()["jobs"]}
    cred = rest.get("/v1/me/credential", token=key).json()
    assert cred["kind"] == "CREDENTIAL_KIND_API_KEY"
    assert cred["api_key"]["id"] == info["id"]

    listed = rest.get("/v1/apiKeys")
    assert listed.status_code == 200, listed.text
    assert key not in listed.text
    assert key[8:] not in listed.text
    mine = [k for k in listed.json()["api_keys"] if k["id"] == info["id"]]
    assert len(mine) == 1
    assert "key" not in mine[0]
    assert mine[0]["last_used_time"] >= info["create_time"]

    assert rest.get("/v1/jobs", token=key).status_code == 200  # the gateway holds it as valid now
    r = rest.s.delete(f"{rest.base}/v1/apiKeys/{info['id']}", headers=rest.headers(), timeout=20)
    assert r.status_code == 200, r.text
    assert r.json() == {}
    gone = rest.get("/v1/me", token=key)  # auth itself: at once
    assert gone.status_code == 401
    assert rest_reason(gone) == "API_KEY_INVALID"
    assert "not valid" in gone.json()["message"]

    def refused() -> bool:
        r = rest.get("/v1/jobs", token=key)
        return r.status_code == 401 and rest_reason(r) == "API_KEY_INVALID"

    refused_within("the gateway refusing a deleted key (REST)", refused, KEY_CACHE_TTL_S + SLACK_S)
    assert rest.upload(clip, token=key).status_code == 401
    again = rest.s.delete(f"{rest.base}/v1/apiKeys/{info['id']}", headers=rest.headers(), timeout=20)
    assert again.status_code == 404
    assert rest_reason(again) == "API_KEY_NOT_FOUND"
    assert info["id"] not in rest.get("/v1/apiKeys").text


def test_keys_over_grpc(mesh, clip):
    client = GrpcClient(mesh.envoy_addr)
    email = client.sign_up_and_login()
    created = client.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(api_key=auth_pb2.ApiKey(display_name="nightly batch")),
        metadata=client.md,
        timeout=20,
    )
    key = created.key
    assert key.startswith("v2m_")
    assert client.auth.GetMe(auth_pb2.GetMeRequest(), metadata=md(key), timeout=10).email == email
    job = client.media.UploadVideo(client_upload(clip), metadata=md(key), timeout=60)
    assert job.job_id
    jobs = client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=md(key), timeout=10).jobs
    assert job.job_id in {j.job_id for j in jobs}
    listed = client.auth.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=client.md, timeout=10)
    assert [k.id for k in listed.api_keys] == [created.api_key.id]
    assert listed.api_keys[0].HasField("last_used_time")

    client.auth.DeleteApiKey(auth_pb2.DeleteApiKeyRequest(id=created.api_key.id), metadata=client.md, timeout=10)

    def refused() -> bool:
        try:
            client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=md(key), timeout=10)
        except grpc.RpcError as e:
            return e.code() == grpc.StatusCode.UNAUTHENTICATED and reason(e) == "API_KEY_INVALID"
        return False

    refused_within("the gateway refusing a deleted key (gRPC)", refused, KEY_CACHE_TTL_S + SLACK_S)
    with pytest.raises(grpc.RpcError) as e:
        client.auth.DeleteApiKey(auth_pb2.DeleteApiKeyRequest(id=created.api_key.id), metadata=client.md, timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    client.close()


def client_upload(clip):
    from testkit.clients import upload_messages

    return upload_messages(clip, "clip.mp4")


def test_a_read_only_key_cannot_upload_or_delete(rest, clip, tmp_path):
    job_id = rest.upload(clip).json()["job_id"]
    key = create_key(rest, "dashboard", ["API_KEY_SCOPE_READ"])["key"]

    refused = rest.upload(make_text_file(tmp_path / "t.mp4"), token=key)
    assert refused.status_code == 403, refused.text
    body = refused.json()
    assert rest_reason(refused) == "API_KEY_SCOPE_INSUFFICIENT"
    assert "read-only" in body["message"]
    assert "write scope" in body["message"]
    assert rest_details(body)["ErrorInfo"]["metadata"]["needed_scope"] == "write"
    deleted = rest.s.delete(f"{rest.base}/v1/jobs/{job_id}", headers=bearer(key), timeout=20)
    assert deleted.status_code == 403
    assert rest_reason(deleted) == "API_KEY_SCOPE_INSUFFICIENT"

    # Reading is what it is for.
    assert rest.get("/v1/jobs", token=key).status_code == 200
    assert rest.get(f"/v1/jobs/{job_id}", token=key).status_code == 200
    assert rest.wait(job_id)["state"] == "JOB_STATE_DONE"
    mp3 = rest.get(f"/v1/jobs/{job_id}/mp3", token=key)
    assert mp3.status_code == 200
    assert mp3.headers["content-type"] == "audio/mpeg"

    grpc_client = GrpcClient(rest.base.split("//", 1)[1])
    with pytest.raises(grpc.RpcError) as e:
        grpc_client.media.UploadVideo(client_upload(clip), metadata=md(key), timeout=30)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(e.value) == "API_KEY_SCOPE_INSUFFICIENT"
    grpc_client.close()


def test_scopes_write_only_and_the_account_is_for_sessions(rest, mesh, clip):
    write_only = create_key(rest, "camera uploader", ["API_KEY_SCOPE_WRITE"])["key"]
    assert rest.upload(clip, token=write_only).status_code == 200
    r = rest.get("/v1/jobs", token=write_only)
    assert r.status_code == 403
    assert rest_reason(r) == "API_KEY_SCOPE_INSUFFICIENT"

    full = create_key(rest, "everything")["key"]
    grpc_client = GrpcClient(mesh.envoy_addr)
    with pytest.raises(grpc.RpcError) as e:  # emptying the account: never with a key
        grpc_client.media.DeleteMyData(media_pb2.DeleteMyDataRequest(), metadata=md(full), timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(e.value) == "SESSION_REQUIRED"
    grpc_client.close()
    for method, path in (
        ("POST", "/v1/apiKeys"),
        ("GET", "/v1/apiKeys"),
        ("GET", "/v1/sessions"),
        ("DELETE", "/v1/me"),
    ):
        r = rest.s.request(
            method,
            f"{rest.base}{path}",
            headers=bearer(full),
            json={"display_name": "more"} if method == "POST" else None,
            timeout=20,
        )
        assert r.status_code == 403, (path, r.text)
        assert rest_reason(r) == "SESSION_REQUIRED"
        assert "needs a login session" in r.json()["message"]
    assert rest.get("/v1/me", token=full).status_code == 200  # the account still exists


def test_bad_requests_and_bad_keys(rest):
    for body, why, field in (
        ({"display_name": "  "}, "INVALID_DISPLAY_NAME", "api_key.display_name"),
        ({"display_name": "x" * 101}, "INVALID_DISPLAY_NAME", "api_key.display_name"),
        ({"display_name": "ok", "scopes": ["API_KEY_SCOPE_UNSPECIFIED"]}, "INVALID_SCOPE", "api_key.scopes"),
    ):
        r = rest.s.post(f"{rest.base}/v1/apiKeys", json=body, headers=rest.headers(), timeout=20)
        assert r.status_code == 400, r.text
        details = rest_details(r.json())
        assert details["ErrorInfo"]["reason"] == why
        assert details["BadRequest"]["field_violations"][0]["field"] == field
    for key in ("v2m_short", "v2m_" + "A" * 43, create_key(rest)["key"][:-1] + "!"):
        for path in ("/v1/jobs", "/v1/me"):
            r = rest.get(path, token=key)
            assert r.status_code == 401, (key, path, r.text)
            assert rest_reason(r) == "API_KEY_INVALID"


def test_keys_are_per_user(mesh, rest):
    mine = create_key(rest)["api_key"]
    other = RestClient(mesh.rest_base_url)
    other.sign_up_and_login()
    assert other.get("/v1/apiKeys").json()["api_keys"] == []
    r = other.s.delete(f"{other.base}/v1/apiKeys/{mine['id']}", headers=other.headers(), timeout=20)
    assert r.status_code == 404
    assert mine["id"] in rest.get("/v1/apiKeys").text


def test_list_pages(rest):
    ids = [create_key(rest, f"key {i}")["api_key"]["id"] for i in range(5)]
    seen, token = [], ""
    while True:
        page = rest.get("/v1/apiKeys", params={"page_size": 2, "page_token": token}).json()
        assert len(page["api_keys"]) <= 2
        seen += [k["id"] for k in page["api_keys"]]
        token = page["next_page_token"]
        if not token:
            break
    assert seen == list(reversed(ids))  # newest first
    r = rest.get("/v1/apiKeys", params={"page_token": "garbage!"})
    assert r.status_code == 400
    assert rest_reason(r) == "INVALID_PAGE"


def test_keys_are_stored_only_as_hashes_and_go_with_the_account(mesh, rest):
    created = create_key(rest)
    key, key_id = created["key"], created["api_key"]["id"]
    con = mysql(mesh)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT * FROM api_keys WHERE id = %s", (key_id,))
            row = cur.fetchone()
            assert hashlib.sha256(key.encode()).digest() in row
            assert not any(
                isinstance(v, (str, bytes))
                and len(v) > 8
                and ((v if isinstance(v, str) else v.decode("latin-1")) in key)
                for v in row
            )
            user_id = row[1]
        assert rest.get("/v1/jobs", token=key).status_code == 200
        r = rest.s.delete(f"{rest.base}/v1/me", headers=rest.headers(), timeout=60)
        assert r.status_code == 200, r.text
        assert rest.get("/v1/me", token=key).status_code == 401
        refused_within(
            "the gateway refusing the key of a deleted account",
            lambda: rest.get("/v1/jobs", token=key).status_code == 401,
            KEY_CACHE_TTL_S + SLACK_S,
        )
        con.commit()  # a fresh snapshot
        with con.cursor() as cur:
            for table in ("api_keys", "sessions", "refresh_tokens"):
                cur.execute(f"SELECT COUNT(*) FROM {table} WHERE user_id = %s", (user_id,))
                assert cur.fetchone()[0] == 0, table
    finally:
        con.close()


def test_a_key_is_never_served_stale_while_auth_is_down(mesh_control):
    mesh = mesh_control
    rest = RestClient(mesh.rest_base_url)
    rest.sign_up_and_login(unique_email("stale"))
    key = create_key(rest)["key"]
    assert rest.get("/v1/jobs", token=key).status_code == 200
    assert rest.get("/v1/jobs").status_code == 200  # the session's user confirmed too
    mesh.stop_service("auth")

    def unavailable() -> bool:
        r = rest.get("/v1/jobs", token=key)
        assert r.status_code in (200, 503), r.text
        return r.status_code == 503 and rest_reason(r) == "AUTH_UNAVAILABLE"

    refused_within("a key going unconfirmed while auth is down", unavailable, KEY_CACHE_TTL_S + SLACK_S)
    # An access token's user, confirmed before, keeps working (USER_CACHE_STALE_S).
    assert rest.get("/v1/jobs").status_code == 200


def test_the_documented_session_runs_as_written(mesh, tmp_path):
    """docs/authentication.md's "A session with curl" block, with bash, as test_readme.py runs the README's."""
    text = (ROOT / "docs" / "authentication.md").read_text(encoding="utf-8")
    section = re.search(r"^## A session with curl\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "docs/authentication.md has no section '## A session with curl'"
    script = "\n".join(re.findall(r"^```sh\n(.*?)^```", section.group(1), re.M | re.S))
    assert "localhost:8000" in script
    for name in (".venv", "testkit"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    r = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script.replace("localhost:8000", mesh.envoy_addr)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert '"email":"dan@example.com"' in lines[0]
    assert analyse_mp3(tmp_path / "demo-key.mp3")[0] > 4.9  # the program's MP3
    listed = next(line for line in lines if line.startswith('{"api_keys"'))
    assert '"display_name":"nightly batch"' in listed
    assert '"key":' not in listed
    assert "{}" in lines  # the delete, the logout
    assert '"reason":"API_KEY_INVALID"' in r.stdout  # the deleted key, 2 s later
    assert '"current":true' in r.stdout  # the session list
