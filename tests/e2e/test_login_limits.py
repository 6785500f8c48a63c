"""Password guessing held off: failed-login limits per account and per client
address (shared by every auth replica through MySQL), and Envoy's edge limit."""
from __future__ import annotations

import secrets
import statistics
import time

import grpc
import pytest
import requests
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from localmesh.stack import Stack
from testkit.clients import unique_email
from testkit.status import rest_details
from testkit.testbed import fresh_ports
from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc

PASSWORD = "correct horse 1"
LIMITS = dict(LOGIN_ACCOUNT_FAILURES=3, LOGIN_ADDRESS_FAILURES=6, LOGIN_BLOCK_BASE_S=2, LOGIN_BLOCK_MAX_S=60)


def address() -> str:
    """A client address of its own (TEST-NET-3), as Envoy would forward it."""
    return f"203.0.113.{secrets.randbelow(250) + 1}, 10.0.{secrets.randbelow(250)}.{secrets.randbelow(250)}"


def stub(stack) -> auth_pb2_grpc.AuthServiceStub:
    return auth_pb2_grpc.AuthServiceStub(grpc.insecure_channel(stack.auth_addr))


def login(auth, email: str, password: str, xff: str):
    """(code, seconds taken, error or None)."""
    t = time.monotonic()
    try:
        auth.Login(auth_pb2.LoginRequest(email=email, password=password),
                   metadata=[("x-forwarded-for", xff)], timeout=20)
        return grpc.StatusCode.OK, time.monotonic() - t, None
    except grpc.RpcError as e:
        return e.code(), time.monotonic() - t, e


@pytest.fixture(scope="module")
def two_auths(mesh_env, tmp_path_factory):
    """Two auth processes on one MySQL database: the replicas of a deployment."""
    stacks = []
    try:
        for i in range(2):
            env = fresh_ports(mesh_env)
            env.update({k: str(v) for k, v in LIMITS.items()})
            stacks.append(Stack(env, log_dir=tmp_path_factory.mktemp(f"auth{i}")))
            stacks[-1].start(["auth"])
        yield stacks
    finally:
        for s in stacks:
            s.close()


def sign_up(auth) -> str:
    email = unique_email("guess")
    auth.SignUp(auth_pb2.SignUpRequest(email=email, password=PASSWORD), timeout=20)
    return email


def test_thirty_wrong_passwords_are_held_off_without_hashing(two_auths):
    a = stub(two_auths[0])
    email, xff = sign_up(a), address()
    results = [login(a, email, "wrong password", xff) for _ in range(30)]
    codes = [c for c, _, _ in results]
    assert codes[:3] == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert codes[3:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 27
    hashed = statistics.median(t for _, t, _ in results[:3])
    blocked = statistics.median(t for _, t, _ in results[3:])
    assert blocked < hashed / 3, (blocked, hashed)  # a blocked attempt does no argon2 work
    # Even the right password waits out the block.
    assert login(a, email, PASSWORD, xff)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED

    err = results[-1][2]
    assert "try again in" in err.details()
    status = rpc_status.from_call(err)
    info, reason = error_details_pb2.RetryInfo(), error_details_pb2.ErrorInfo()
    assert any(d.Unpack(reason) for d in status.details)
    assert reason.reason == "LOGIN_BLOCKED"
    assert any(d.Unpack(info) for d in status.details)
    assert 1 <= info.retry_delay.seconds <= 2
    assert dict(err.trailing_metadata())["retry-after"] == str(info.retry_delay.seconds)


def test_the_wait_grows_with_each_further_failure(two_auths):
    a = stub(two_auths[0])
    email, xff = sign_up(a), address()
    waits = []
    for _ in range(3):
        while True:
            code, _, err = login(a, email, "wrong password", xff)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                waits.append(int(dict(err.trailing_metadata())["retry-after"]))
                time.sleep(waits[-1] + 0.1)
                break
    assert waits == [2, 4, 8]


def test_limits_are_shared_by_every_auth_replica(two_auths):
    a, b = stub(two_auths[0]), stub(two_auths[1])
    email, xff = sign_up(a), address()
    assert login(a, email, "wrong password", xff)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert login(b, email, "wrong password", xff)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert login(a, email, "wrong password", xff)[0] == grpc.StatusCode.UNAUTHENTICATED
    # The third failure (on a) blocks the account on b too, whatever the address.
    assert login(b, email, "wrong password", address())[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert login(a, email, PASSWORD, address())[0] == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_correct_login_resets_the_account(two_auths):
    a, b = stub(two_auths[0]), stub(two_auths[1])
    email = sign_up(a)
    for _ in range(2):
        assert login(a, email, "wrong password", address())[0] == grpc.StatusCode.UNAUTHENTICATED
    assert login(b, email, PASSWORD, address())[0] == grpc.StatusCode.OK
    for _ in range(2):  # counting from zero again
        assert login(b, email, "wrong password", address())[0] == grpc.StatusCode.UNAUTHENTICATED
    assert login(a, email, PASSWORD, address())[0] == grpc.StatusCode.OK


def test_an_address_guessing_at_many_accounts_is_blocked(two_auths):
    a, b = stub(two_auths[0]), stub(two_auths[1])
    xff = address()
    victims = [sign_up(a) for _ in range(4)]
    # 6 failures from one address, spread over accounts (none reaches its own limit).
    for i in range(6):
        code = login(a if i % 2 else b, victims[i % 3], "wrong password", xff)[0]
        assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _, err = login(b, victims[3], PASSWORD, xff)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "try again in" in err.details()
    # The same account from another address is fine, and that does not unblock the address.
    assert login(a, victims[3], PASSWORD, address())[0] == grpc.StatusCode.OK
    assert login(a, victims[3], PASSWORD, xff)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_rest_gets_429_with_retry_after_through_envoy(mesh):
    rest = requests.Session()
    email = unique_email("rest-guess")
    r = rest.post(f"{mesh.rest_base_url}/v1/users", json={"email": email, "password": PASSWORD}, timeout=20)
    assert r.status_code == 200
    answers = [rest.post(f"{mesh.rest_base_url}/v1/login", json={"email": email, "password": "nope nope"},
                         timeout=20) for _ in range(6)]
    assert [r.status_code for r in answers] == [401] * 5 + [429]
    blocked = answers[-1]
    assert int(blocked.headers["retry-after"]) >= 1
    body = blocked.json()
    assert body["code"] == 8
    assert "try again in" in body["message"]
    details = rest_details(body)
    assert details["ErrorInfo"]["reason"] == "LOGIN_BLOCKED"
    assert details["RetryInfo"]["retry_delay"] == f"{blocked.headers['retry-after']}s"


def test_envoy_edge_limit_answers_429(mesh_factory):
    stack = mesh_factory(services=("auth", "envoy"), ENVOY_LOGIN_LIMIT="3/60", ENVOY_SIGNUP_LIMIT="2/60")
    base = stack.rest_base_url
    signups = [requests.post(f"{base}/v1/users", json={"email": unique_email("edge"), "password": PASSWORD},
                             timeout=20).status_code for _ in range(3)]
    assert signups == [200, 200, 429]
    logins = [requests.post(f"{base}/v1/login", json={"email": "edge@example.com", "password": "x" * 9},
                            timeout=20) for _ in range(2)]
    assert [r.status_code for r in logins] == [401, 401]
    r = requests.post(f"{base}/login", auth=("edge@example.com", "x" * 9), timeout=20)  # the seed's route
    assert r.status_code == 401
    r = requests.post(f"{base}/v1/login", json={"email": "edge@example.com", "password": "x" * 9}, timeout=20)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "60"
    # gRPC shares the bucket: RESOURCE_EXHAUSTED.
    with pytest.raises(grpc.RpcError) as e:
        auth_pb2_grpc.AuthServiceStub(grpc.insecure_channel(stack.envoy_addr)).Login(
            auth_pb2.LoginRequest(email="edge@example.com", password="x" * 9), timeout=20)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Other routes are not limited.
    assert requests.get(f"{base}/.well-known/jwks.json", timeout=20).status_code == 200
