"""The `video2mp3` command's login that lasts, and its API keys, against the
running mesh: the refresh token is kept private, an expired access token is
renewed silently (also by several commands at once), logout ends the
server's session, and `keys create|list|delete` with --api-key /
VIDEO2MP3_API_KEY."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from localmesh.processes import wait_for
from testkit import testbed
from testkit.clients import unique_email
from testkit.status import reason
from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.cli.session import token_claims
from video2mp3.core import tokens

CLI = str(Path(sys.executable).parent / "video2mp3")
PASSWORD = "correct horse 1"


@pytest.fixture
def env(mesh, tmp_path) -> dict:
    """The CLI's environment: the mesh's Envoy, a config dir of its own, no API key."""
    base = {k: v for k, v in os.environ.items() if k != "VIDEO2MP3_API_KEY"}
    return {**base, "VIDEO2MP3_SERVER": mesh.envoy_addr, "XDG_CONFIG_HOME": str(tmp_path / "config"), "COLUMNS": "140"}


def run(env: dict, *args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=env, input=stdin, capture_output=True, text=True, timeout=timeout)


def files(env: dict) -> tuple[Path, Path]:
    folder = Path(env["XDG_CONFIG_HOME"]) / "video2mp3"
    return folder / "token", folder / "refresh_token"


@pytest.fixture
def user(env) -> str:
    """Signed up and logged in (login saved in env's config dir)."""
    email = unique_email("clis")
    assert run(env, "signup", "--email", email, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    r = run(env, "login", "--email", email, "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    assert "renews itself" in r.stdout
    return email


@pytest.fixture
def auth(mesh):
    channel = grpc.insecure_channel(mesh.envoy_addr)
    yield auth_pb2_grpc.AuthServiceStub(channel)
    channel.close()


def expire_the_access_token(env: dict, mesh) -> str:
    """Replace the saved access token by one of the same user and session that expired an hour
    ago (past any leeway), as after a long batch or a night; returns it."""
    token_file, _ = files(env)
    claims = token_claims(token_file.read_text().strip())
    key = testbed.signing_key(mesh.env)
    old = tokens.issue(
        key.private_key, key.kid, claims["sub"], claims["email"], 60, now=time.time() - 3600, session_id=claims["sid"]
    )
    token_file.write_text(old + "\n")
    return old


def test_the_refresh_token_is_private_and_an_expired_token_is_renewed_silently(env, user, mesh, auth):
    token_file, refresh_file = files(env)
    assert stat.S_IMODE(refresh_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    first_refresh = refresh_file.read_text().strip()
    assert first_refresh.startswith("v2mrt_")
    old = expire_the_access_token(env, mesh)

    r = run(env, "jobs")
    assert r.returncode == 0, r.stderr
    renewed = token_file.read_text().strip()
    assert renewed != old
    assert token_claims(renewed)["exp"] > time.time() + 60
    assert token_claims(renewed)["sid"] == token_claims(old)["sid"]
    assert refresh_file.read_text().strip() != first_refresh  # rotated
    assert stat.S_IMODE(refresh_file.stat().st_mode) == 0o600
    with pytest.raises(grpc.RpcError) as e:  # the spent one is spent
        auth.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=first_refresh), timeout=20)
    assert reason(e.value) == "REFRESH_TOKEN_REUSED"
    # ... which ended the session: the CLI now says to log in.
    expire_the_access_token(env, mesh)
    r = run(env, "jobs")
    assert r.returncode == 3
    assert "your login has ended" in r.stderr
    assert "video2mp3 login" in r.stderr
    assert not refresh_file.exists()


def test_commands_at_once_renew_the_login_once(env, user, mesh):
    _, refresh_file = files(env)
    expire_the_access_token(env, mesh)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run(env, "jobs"), range(4)))
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]
    # The session survived (no refresh token was spent twice): it renews again.
    expire_the_access_token(env, mesh)
    r = run(env, "whoami")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(user)
    assert "renewed automatically" in r.stdout
    assert refresh_file.exists()


def test_logout_ends_the_session_on_the_server(env, user, mesh, auth):
    token_file, refresh_file = files(env)
    access, refresh = token_file.read_text().strip(), refresh_file.read_text().strip()
    r = run(env, "logout")
    assert r.returncode == 0, r.stderr
    assert "Logged out. The server has ended the session." in r.stdout
    assert not token_file.exists()
    assert not refresh_file.exists()
    with pytest.raises(grpc.RpcError) as e:
        auth.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=refresh), timeout=20)
    assert reason(e.value) == "SESSION_REVOKED"
    with pytest.raises(grpc.RpcError) as e:
        auth.GetMe(auth_pb2.GetMeRequest(), metadata=[("authorization", f"Bearer {access}")], timeout=20)
    assert reason(e.value) == "SESSION_REVOKED"
    r = run(env, "jobs")
    assert r.returncode == 3
    assert run(env, "logout").stdout.strip() == "Was not logged in."


def test_api_keys_from_the_command_line(env, user, mesh, clip, tmp_path):
    r = run(env, "keys", "create", "nightly batch")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("v2m_")
    assert len(key) == 47
    assert "shown only now" in r.stderr
    r = run(env, "keys", "create", "dashboard", "--read-only")
    assert r.returncode == 0, r.stderr
    read_only = r.stdout.strip()
    listed = run(env, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    lines = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [(row[1], row[2]) for row in lines] == [("dashboard", "read-only"), ("nightly batch", "read and write")]
    assert key not in listed.stdout
    assert read_only not in listed.stdout
    assert lines[1][3] == key[:8] + "…"

    # A program with only the key: no login in its config dir.
    keyed = {**env, "XDG_CONFIG_HOME": str(tmp_path / "elsewhere"), "VIDEO2MP3_API_KEY": key}
    r = run(keyed, "whoami")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(user)
    assert "API key v2m_" in r.stdout
    video = tmp_path / "clip.mp4"
    video.write_bytes(Path(clip).read_bytes())
    r = run(keyed, "convert", str(video), "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "out" / "clip.mp3").exists()
    r = run(keyed, "keys", "list")  # managing keys needs a login
    assert r.returncode == 1
    assert "needs a login session" in r.stderr

    unkeyed = {k: v for k, v in keyed.items() if k != "VIDEO2MP3_API_KEY"}
    r = run(unkeyed, "--api-key", read_only, "jobs")
    assert r.returncode == 0, r.stderr
    assert "clip.mp4" in r.stdout
    r = run(unkeyed, "--api-key", read_only, "convert", str(video))
    assert r.returncode == 5
    assert "read-only" in r.stdout + r.stderr

    key_id = next(row[0] for row in lines if row[1] == "nightly batch")
    r = run(env, "keys", "delete", key_id)
    assert r.returncode == 0, r.stderr
    assert f"Deleted API key {key_id}." in r.stdout

    def refused() -> bool:
        r = run(keyed, "jobs")
        return r.returncode == 3 and "did not accept the API key" in r.stderr

    wait_for("the deleted key to be refused", refused, timeout=10, interval=0.2)
    assert "nightly batch" not in run(env, "keys", "list").stdout
