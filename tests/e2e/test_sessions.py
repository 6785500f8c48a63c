"""Login sessions through the real mesh: refresh tokens rotate on every use,
a reused one ends its whole session, sessions are listed and revoked,
logout ends the current one, and an ended session's access tokens stop
working (at auth at once, at the gateway within USER_CACHE_TTL_S)."""

from __future__ import annotations

import threading
import time

import grpc
import jwt
import pymysql
import pytest
import requests

from localmesh.processes import wait_for
from testkit.clients import GrpcClient, RestClient, unique_email
from testkit.status import reason, rest_details
from video2mp3.auth.v1 import auth_pb2
from video2mp3.core import credentials

PASSWORD = "correct horse 1"
# testkit/testbed.py's mesh runs the gateway with USER_CACHE_TTL_S=1.
USER_CACHE_TTL_S = 1.0
SLACK_S = 3.0


def rest_reason(r: requests.Response) -> str:
    return rest_details(r.json())["ErrorInfo"]["reason"]


def login(base: str, email: str, **headers: str) -> dict:
    r = requests.post(f"{base}/v1/login", json={"email": email, "password": PASSWORD}, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def refresh(base: str, token: str) -> requests.Response:
    return requests.post(f"{base}/v1/sessions:refresh", json={"refresh_token": token}, timeout=30)


def get(base: str, path: str, token: str) -> requests.Response:
    return requests.get(f"{base}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture
def user(mesh) -> tuple[str, str]:
    """(Envoy's REST base URL, the email of a new user)."""
    rest = RestClient(mesh.rest_base_url)
    email = rest.sign_up_and_login(password=PASSWORD)
    return mesh.rest_base_url, email


def refused_at_the_gateway(base: str, token: str, why: str) -> None:
    def refused() -> bool:
        r = get(base, "/v1/jobs", token)
        return r.status_code == 401 and rest_reason(r) == why

    wait_for(f"the gateway to refuse the token ({why})", refused, timeout=USER_CACHE_TTL_S + SLACK_S, interval=0.05)


def test_login_gives_a_refresh_token_and_the_seed_login_is_unchanged(user):
    base, email = user
    answer = login(base, email)
    assert answer["token_type"] == "Bearer"
    assert answer["refresh_token"].startswith("v2mrt_")
    assert credentials.well_formed(answer["refresh_token"], credentials.REFRESH_TOKEN_PREFIX)
    assert int(answer["refresh_token_expires_in"]) > 86400
    claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
    assert claims["sid"] == answer["session_id"]
    seed = requests.post(f"{base}/login", auth=(email, PASSWORD), timeout=30)
    assert seed.status_code == 200
    assert seed.headers["content-type"].startswith("text/plain")
    assert seed.text.count(".") == 2  # the bare JWT, as the seed answered
    assert get(base, "/v1/jobs", seed.text).status_code == 200


def test_refresh_rotates_and_a_reused_token_ends_the_whole_session(user):
    base, email = user
    first = login(base, email)
    r = refresh(base, first["refresh_token"])
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["session_id"] == first["session_id"]
    assert second["refresh_token"] != first["refresh_token"]
    assert get(base, "/v1/jobs", second["access_token"]).status_code == 200
    assert get(base, "/v1/me", second["access_token"]).json()["email"] == email
    third = refresh(base, second["refresh_token"]).json()
    assert get(base, "/v1/jobs", third["access_token"]).status_code == 200

    reused = refresh(base, first["refresh_token"])  # a thief replays an old one
    assert reused.status_code == 401
    assert rest_reason(reused) == "REFRESH_TOKEN_REUSED"
    assert "used already" in reused.json()["message"]
    newest = refresh(base, third["refresh_token"])  # ... and the family is gone for everyone
    assert newest.status_code == 401
    assert rest_reason(newest) == "SESSION_REVOKED"
    me = get(base, "/v1/me", third["access_token"])
    assert me.status_code == 401
    assert rest_reason(me) == "SESSION_REVOKED"
    refused_at_the_gateway(base, third["access_token"], "SESSION_REVOKED")
    # Another login is another session, untouched.
    assert get(base, "/v1/jobs", login(base, email)["access_token"]).status_code == 200


def test_concurrent_refreshes_with_one_token_leave_one_winner(user):
    base, email = user
    token = login(base, email)["refresh_token"]
    answers: list[requests.Response] = []
    go = threading.Barrier(4)

    def racer():
        go.wait()
        answers.append(refresh(base, token))

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in answers)
    assert codes == [200, 401, 401, 401], [r.text for r in answers]
    assert {rest_reason(r) for r in answers if r.status_code == 401} <= {"REFRESH_TOKEN_REUSED", "SESSION_REVOKED"}
    winner = next(r.json() for r in answers if r.status_code == 200)
    assert rest_reason(refresh(base, winner["refresh_token"])) == "SESSION_REVOKED"


def test_sessions_are_listed_and_revoked(user, mesh):
    base, email = user
    laptop = login(base, email, **{"User-Agent": "laptop-browser/1.0"})
    phone = login(base, email, **{"User-Agent": "phone-app/2.0"})
    listed = get(base, "/v1/sessions", laptop["access_token"])
    assert listed.status_code == 200, listed.text
    sessions = {s["id"]: s for s in listed.json()["sessions"]}
    assert {laptop["session_id"], phone["session_id"]} <= set(sessions)
    assert sessions[laptop["session_id"]]["current"] is True
    assert sessions[phone["session_id"]]["current"] is False
    assert sessions[phone["session_id"]]["user_agent"].startswith("phone-app/2.0")
    assert sessions[phone["session_id"]]["client_address"]
    for s in sessions.values():
        assert s["create_time"] <= s["refresh_time"] < s["expire_time"]
    assert "refresh_token" not in listed.text
    assert laptop["refresh_token"] not in listed.text

    r = requests.delete(
        f"{base}/v1/sessions/{phone['session_id']}",
        headers={"Authorization": f"Bearer {laptop['access_token']}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {}
    assert phone["session_id"] not in get(base, "/v1/sessions", laptop["access_token"]).text
    assert rest_reason(refresh(base, phone["refresh_token"])) == "SESSION_REVOKED"
    refused_at_the_gateway(base, phone["access_token"], "SESSION_REVOKED")
    again = requests.delete(
        f"{base}/v1/sessions/{phone['session_id']}",
        headers={"Authorization": f"Bearer {laptop['access_token']}"},
        timeout=30,
    )
    assert again.status_code == 404
    assert rest_reason(again) == "SESSION_NOT_FOUND"
    # Another user cannot see or end these.
    other = RestClient(mesh.rest_base_url)
    other.sign_up_and_login()
    assert laptop["session_id"] not in other.get("/v1/sessions").text
    r = other.s.delete(f"{base}/v1/sessions/{laptop['session_id']}", headers=other.headers(), timeout=30)
    assert r.status_code == 404
    assert get(base, "/v1/jobs", laptop["access_token"]).status_code == 200


def test_logout_revokes_the_session_and_its_access_tokens(user):
    base, email = user
    session = login(base, email)
    assert get(base, "/v1/jobs", session["access_token"]).status_code == 200
    r = requests.post(f"{base}/v1/sessions:revoke", json={"refresh_token": session["refresh_token"]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {}
    assert rest_reason(refresh(base, session["refresh_token"])) == "SESSION_REVOKED"
    assert rest_reason(get(base, "/v1/me", session["access_token"])) == "SESSION_REVOKED"
    refused_at_the_gateway(base, session["access_token"], "SESSION_REVOKED")
    # RFC 7009: revoking again, or an unknown token, is not an error.
    for token in (session["refresh_token"], credentials.new_secret(credentials.REFRESH_TOKEN_PREFIX), "junk"):
        assert requests.post(f"{base}/v1/sessions:revoke", json={"refresh_token": token}, timeout=30).status_code == 200
    missing = requests.post(f"{base}/v1/sessions:revoke", json={}, timeout=30)
    assert missing.status_code == 400


def test_bad_refresh_tokens(user):
    base, _ = user
    for token in ("junk", credentials.new_secret(credentials.REFRESH_TOKEN_PREFIX)):
        r = refresh(base, token)
        assert r.status_code == 401
        assert rest_reason(r) == "REFRESH_TOKEN_INVALID"
    r = refresh(base, "")
    assert r.status_code == 400


def test_sessions_over_grpc(mesh):
    client = GrpcClient(mesh.envoy_addr)
    email = client.sign_up_and_login(password=PASSWORD)
    first = client.login
    assert first is not None
    assert first.refresh_token.startswith("v2mrt_")
    second = client.auth.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=first.refresh_token), timeout=20)
    assert second.session_id == first.session_id
    listed = client.auth.ListSessions(
        auth_pb2.ListSessionsRequest(), metadata=[("authorization", f"Bearer {second.access_token}")], timeout=10
    )
    assert [s.id for s in listed.sessions if s.current] == [first.session_id]
    with pytest.raises(grpc.RpcError) as e:
        client.auth.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=first.refresh_token), timeout=20)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(e.value) == "REFRESH_TOKEN_REUSED"
    client.auth.RevokeSession(auth_pb2.RevokeSessionRequest(refresh_token=second.refresh_token), timeout=20)
    other = client.auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD), timeout=20)
    client.auth.DeleteSession(
        auth_pb2.DeleteSessionRequest(id=other.session_id),
        metadata=[("authorization", f"Bearer {other.access_token}")],
        timeout=10,
    )  # ending one's own current session
    with pytest.raises(grpc.RpcError) as e:
        client.auth.GetMe(
            auth_pb2.GetMeRequest(), metadata=[("authorization", f"Bearer {other.access_token}")], timeout=10
        )
    assert reason(e.value) == "SESSION_REVOKED"
    client.close()


def test_refresh_tokens_are_stored_only_as_hashes(user, mesh):
    base, email = user
    session = login(base, email)
    e = mesh.env
    con = pymysql.connect(
        host=e["MYSQL_HOST"],
        port=int(e["MYSQL_PORT"]),
        user=e["MYSQL_USER"],
        password=e["MYSQL_PASSWORD"],
        database=e["MYSQL_DB"],
        connect_timeout=5,
    )
    try:
        with con.cursor() as cur:
            cur.execute("SELECT * FROM refresh_tokens WHERE session_id = %s", (session["session_id"],))
            rows = cur.fetchall()
            cur.execute("SELECT * FROM sessions WHERE id = %s", (session["session_id"],))
            rows += cur.fetchall()
    finally:
        con.close()
    assert credentials.digest(session["refresh_token"]) in rows[0]
    secret = session["refresh_token"][len("v2mrt_") :]
    for row in rows:
        for value in row:
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            assert secret not in text
            assert len(text) < 8 or text not in secret


def test_an_idle_session_expires(mesh_factory):
    stack = mesh_factory(services=("auth",), REFRESH_TOKEN_TTL_SECONDS="1")
    channel = grpc.insecure_channel(stack.auth_addr)
    from video2mp3.auth.v1 import auth_pb2_grpc

    stub = auth_pb2_grpc.AuthServiceStub(channel)
    email = unique_email("idle")
    stub.SignUp(auth_pb2.SignUpRequest(email=email, password=PASSWORD), timeout=20)
    answer = stub.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD), timeout=20)
    assert answer.refresh_token_expires_in <= 1
    time.sleep(1.5)  # unused for longer than REFRESH_TOKEN_TTL_SECONDS
    with pytest.raises(grpc.RpcError) as e:
        stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=answer.refresh_token), timeout=20)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(e.value) == "SESSION_EXPIRED"
    channel.close()
