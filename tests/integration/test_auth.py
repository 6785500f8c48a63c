"""AuthService against the real MariaDB (127.0.0.1:3306 by default).

The auth server runs as a subprocess (`python -m video2mp3.auth`), exactly as in production,
on a free port and against its own database (video2mp3_test_<random>), dropped at
the end. MySQL outages are simulated with a TCP proxy in front of the shared
MariaDB, which is never stopped.
"""
from __future__ import annotations

import atexit
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import jwt
import pymysql
import pytest
from argon2 import PasswordHasher
from grpc_health.v1 import health_pb2, health_pb2_grpc

import testkit
from localmesh.processes import Child, free_port, wait_for
from testkit import testbed
from testkit.status import reason
from testkit.tcp_proxy import TcpProxy
from video2mp3.auth.keys import ensure_key, generate, load_dir
from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.core import tokens

ROOT = testkit.ROOT
SERVICE = "video2mp3.auth.v1.AuthService"
# This module's own signing key, shared by every auth server it starts.
KEYS_DIR = Path(tempfile.mkdtemp(prefix="video2mp3-test-keys-"))
atexit.register(shutil.rmtree, KEYS_DIR, True)
ensure_key(KEYS_DIR)
KEY = load_dir(KEYS_DIR)[0]
TTL = 900
RPC_TIMEOUT = 30  # generous for a loaded 2-core machine; a hung RPC is DEADLINE_EXCEEDED, never a pass
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

MYSQL = testbed.mysql_settings()


# -- helpers --------------------------------------------------------------------



def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    kwargs.setdefault("timeout", RPC_TIMEOUT)
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


class AuthServer:
    """`python -m video2mp3.auth` in a subprocess, with its own port, database and log file."""

    def __init__(self, log_path: Path, db: str, mysql_port: int, **extra_env: str):
        self.port = free_port()
        self.log_path = log_path
        env = dict(
            os.environ,
            AUTH_PORT=str(self.port),
            MYSQL_HOST=MYSQL["host"],
            MYSQL_PORT=str(mysql_port),
            MYSQL_USER=MYSQL["user"],
            MYSQL_PASSWORD=MYSQL["password"],
            MYSQL_DB=db,
            AUTH_KEYS_DIR=str(KEYS_DIR),
            TOKEN_TTL_SECONDS=str(TTL),
            MYSQL_CONNECT_TIMEOUT="2",
            MYSQL_READ_TIMEOUT="3",
            MYSQL_WRITE_TIMEOUT="3",
            DB_CHECK_INTERVAL_SECONDS="0.3",
            GRACE_SECONDS="2",
            LOG_LEVEL="INFO",
            AUTH_METRICS_PORT="0",  # several run at once
        )
        env.update(extra_env)
        self.child = Child("auth", [sys.executable, "-m", "video2mp3.auth"], env=env, cwd=ROOT,
                           log_path=log_path).start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self, service: str = "") -> int | None:
        """The health status, or None if the server does not answer (yet)."""
        try:
            return self.health.Check(health_pb2.HealthCheckRequest(service=service),
                                     timeout=1).status
        except grpc.RpcError:
            return None

    def wait_status(self, expected: int, timeout: float = 30.0) -> None:
        def reached():
            if not self.child.alive:
                raise AssertionError(f"auth server exited with {self.child.returncode}:\n{self.log()}")
            return self.status("") == expected and self.status(SERVICE) == expected
        try:
            wait_for(f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(expected)}", reached,
                     timeout, retry_errors=False)
        except (AssertionError, TimeoutError) as e:
            raise AssertionError(f"{e}\n--- auth log ---\n{self.log()}") from None

    def stop(self) -> int | None:
        self.channel.close()
        return self.child.stop(20)


def sign_up(stub, email: str, password: str = "correct horse battery"):
    return stub.SignUp(auth_pb2.SignUpRequest(email=email, password=password), timeout=RPC_TIMEOUT)


def login(stub, email: str, password: str = "correct horse battery"):
    return stub.Login(auth_pb2.LoginRequest(email=email, password=password), timeout=RPC_TIMEOUT)


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{secrets.token_hex(4)}@example.com"


# -- fixtures (auth_ prefix: tests/conftest.py belongs to the shared suite) ------

@pytest.fixture(scope="session")
def auth_mysql():
    """MariaDB must be up: fail (never skip) with what to do when it is not."""
    try:
        pymysql.connect(connect_timeout=3, **MYSQL).close()
    except pymysql.MySQLError as e:
        pytest.fail(
            f"MariaDB is not reachable at {MYSQL['host']}:{MYSQL['port']} as {MYSQL['user']!r}: {e}. "
            "Start it with: start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
            pytrace=False,
        )
    return MYSQL


@pytest.fixture(scope="session")
def auth_databases(auth_mysql):
    """Names of the databases this session created; all dropped at the end."""
    names: list[str] = []
    yield names
    con = pymysql.connect(connect_timeout=3, autocommit=True, **auth_mysql)
    try:
        with con.cursor() as cur:
            for name in names:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        con.close()


@pytest.fixture(scope="session")
def auth_db_name(auth_databases):
    name = f"video2mp3_test_{secrets.token_hex(4)}"
    auth_databases.append(name)
    return name


@pytest.fixture(scope="session")
def auth_server(auth_mysql, auth_db_name, tmp_path_factory):
    server = AuthServer(tmp_path_factory.mktemp("auth") / "auth.log", auth_db_name,
                        auth_mysql["port"])
    try:
        server.wait_status(SERVING)
        yield server
    finally:
        rc = server.stop()
    assert rc == 0, f"auth server did not stop cleanly on SIGTERM (exit {rc}):\n{server.log()}"


@pytest.fixture
def auth_stub(auth_server):
    return auth_server.stub


@pytest.fixture
def auth_sql(auth_mysql, auth_db_name):
    """A direct connection to the test database, to look at (and tamper with) rows."""
    con = pymysql.connect(connect_timeout=3, autocommit=True, database=auth_db_name, **auth_mysql)
    yield con
    con.close()


# -- SignUp ---------------------------------------------------------------------

def test_sign_up_returns_the_user_with_normalised_email(auth_stub):
    tag = secrets.token_hex(4)
    before = int(time.time()) - 5
    user = sign_up(auth_stub, f"  Mixed.Case-{tag}@Example.COM ")
    assert user.email == f"mixed.case-{tag}@example.com"
    assert int(user.id) > 0
    assert before <= user.create_time.seconds <= int(time.time()) + 5


def test_sign_up_duplicate_email_is_already_exists(auth_stub):
    email = unique_email()
    sign_up(auth_stub, email)
    err = rpc_error(auth_stub.SignUp, auth_pb2.SignUpRequest(email=email.upper(), password="another password"))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert email in err.details()


def test_concurrent_sign_ups_of_one_email_create_one_user(auth_stub, auth_sql):
    email = unique_email("race")
    results = []

    def attempt():
        try:
            sign_up(auth_stub, email)
            results.append("ok")
        except grpc.RpcError as e:
            results.append(e.code())

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(str, results)) == sorted(["ok"] + [str(grpc.StatusCode.ALREADY_EXISTS)] * 3)
    with auth_sql.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM users WHERE email = %s", (email,))
        assert cur.fetchone()[0] == 1


@pytest.mark.parametrize("email", ["", "   ", "no-at-sign.example.com", "a@b", "two@@example.com",
                                   "sp ace@example.com", "x@example.", "a" * 250 + "@example.com"])
def test_sign_up_rejects_a_bad_email(auth_stub, email):
    err = rpc_error(auth_stub.SignUp, auth_pb2.SignUpRequest(email=email, password="long enough password"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("email"), err.details()


@pytest.mark.parametrize("password", ["", "short", "7chars!"])
def test_sign_up_rejects_a_short_password(auth_stub, password):
    err = rpc_error(auth_stub.SignUp, auth_pb2.SignUpRequest(email=unique_email(), password=password))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "password must be at least 8 characters"


def test_password_is_stored_as_an_argon2id_hash(auth_stub, auth_sql):
    email, password = unique_email(), "s3cret-passw0rd"
    sign_up(auth_stub, email, password)
    with auth_sql.cursor() as cur:
        cur.execute("SELECT password, created_at FROM users WHERE email = %s", (email,))
        stored, created_at = cur.fetchone()
    assert stored.startswith("$argon2id$")
    assert password not in stored
    assert PasswordHasher().verify(stored, password)
    assert created_at is not None


# -- Login ----------------------------------------------------------------------

def test_login_returns_a_bearer_token_with_the_standard_claims(auth_stub):
    email = unique_email()
    user = sign_up(auth_stub, email)
    before = int(time.time())
    resp = login(auth_stub, f" {email.upper()} ")
    assert resp.token_type == "Bearer"
    assert resp.expires_in == TTL

    caller = tokens.verify(resp.access_token, {KEY.kid: KEY.public_key}.get)
    assert caller == tokens.Caller(user_id=user.id, email=email)
    assert jwt.get_unverified_header(resp.access_token)["kid"] == KEY.kid
    claims = jwt.decode(resp.access_token, KEY.public_key, algorithms=["EdDSA"], audience=tokens.AUDIENCE)
    assert set(claims) >= {"sub", "email", "iat", "nbf", "exp", "iss", "aud"}
    assert claims["sub"] == user.id
    assert claims["iss"] == tokens.ISSUER
    assert claims["aud"] == tokens.AUDIENCE
    assert claims["exp"] - claims["iat"] == TTL
    assert before - 5 <= claims["iat"] <= int(time.time()) + 5


def test_wrong_password_and_unknown_email_get_the_same_answer(auth_stub):
    email = unique_email()
    sign_up(auth_stub, email)
    wrong_password = rpc_error(auth_stub.Login, auth_pb2.LoginRequest(email=email, password="not the password"))
    unknown_email = rpc_error(auth_stub.Login, auth_pb2.LoginRequest(email=unique_email("nobody"),
                                                                     password="not the password"))
    for err in (wrong_password, unknown_email):
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.details() == "incorrect email or password"


def test_login_without_credentials_is_invalid_argument(auth_stub):
    err = rpc_error(auth_stub.Login, auth_pb2.LoginRequest(email="", password="whatever1"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("email")
    err = rpc_error(auth_stub.Login, auth_pb2.LoginRequest(email=unique_email(), password=""))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("password")


def test_login_rehashes_a_hash_made_with_weaker_parameters(auth_stub, auth_sql):
    email, password = unique_email(), "upgrade me please"
    sign_up(auth_stub, email, password)
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(password)
    with auth_sql.cursor() as cur:
        cur.execute("UPDATE users SET password = %s WHERE email = %s", (weak, email))
    login(auth_stub, email, password)
    with auth_sql.cursor() as cur:
        cur.execute("SELECT password FROM users WHERE email = %s", (email,))
        stored = cur.fetchone()[0]
    assert stored != weak
    assert not PasswordHasher().check_needs_rehash(stored)
    login(auth_stub, email, password)  # and the new hash still verifies


# -- GetMe ----------------------------------------------------------------------

def test_get_me_returns_the_caller(auth_stub):
    email = unique_email()
    user = sign_up(auth_stub, email)
    token = login(auth_stub, email).access_token
    me = auth_stub.GetMe(auth_pb2.GetMeRequest(), metadata=[("authorization", f"Bearer {token}")],
                         timeout=RPC_TIMEOUT)
    assert me == user


@pytest.mark.parametrize("kind", ["missing", "not bearer", "empty", "malformed", "expired",
                                  "wrongly signed", "wrong audience"])
def test_get_me_rejects_a_bad_token(auth_stub, kind):
    now = time.time()
    other = generate()
    metadata = {
        "missing": [],
        "not bearer": [("authorization", "Basic dXNlcjpwYXNz")],
        "empty": [("authorization", "Bearer ")],
        "malformed": [("authorization", "Bearer not.a.jwt")],
        "expired": [("authorization", "Bearer " + tokens.issue(KEY.private_key, KEY.kid, "1", "a@example.com", 60,
                                                               now=now - 3600))],
        "wrongly signed": [("authorization", "Bearer " + tokens.issue(other.private_key, KEY.kid, "1",
                                                                      "a@example.com", 60))],
        "wrong audience": [("authorization", "Bearer " + jwt.encode(
            {"sub": "1", "email": "a@example.com", "iat": int(now), "nbf": int(now), "exp": int(now) + 60,
             "iss": tokens.ISSUER, "aud": "someone-else"}, KEY.private_key, algorithm="EdDSA",
            headers={"kid": KEY.kid}))],
    }[kind]
    err = rpc_error(auth_stub.GetMe, auth_pb2.GetMeRequest(), metadata=metadata)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    # One message for every failure; the precise cause is in auth's log only.
    assert err.details() == tokens.PUBLIC_MESSAGE
    assert reason(err) == "TOKEN_INVALID"


def test_get_me_for_a_deleted_user_is_unauthenticated(auth_stub, auth_sql):
    email = unique_email()
    sign_up(auth_stub, email)
    token = login(auth_stub, email).access_token
    with auth_sql.cursor() as cur:
        cur.execute("DELETE FROM users WHERE email = %s", (email,))
    err = rpc_error(auth_stub.GetMe, auth_pb2.GetMeRequest(), metadata=[("authorization", f"Bearer {token}")])
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (err.details(), reason(err)) == (tokens.PUBLIC_MESSAGE, "USER_DELETED")
    assert err.details() == tokens.PUBLIC_MESSAGE


# -- health ---------------------------------------------------------------------

def test_health_reports_serving(auth_server):
    assert auth_server.status("") == SERVING
    assert auth_server.status(SERVICE) == SERVING


# -- MySQL outages (through a proxy; the shared MariaDB keeps running) -------------

def _assert_unavailable(err: grpc.RpcError):
    # A hang would surface as DEADLINE_EXCEEDED after RPC_TIMEOUT: UNAVAILABLE
    # means the bounded timeouts failed the call first.
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    assert err.details() == "user database unavailable, try again"


@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_mysql_outage_fails_fast_and_recovers_without_restart(auth_mysql, auth_db_name, tmp_path, fault):
    """cut: connections closed and refused (MySQL stopped). stall: connections stay
    open and nothing comes back (MySQL hung, packets dropped): only the bounded
    connect/read timeouts turn that into UNAVAILABLE before the RPC deadline."""
    with TcpProxy(auth_mysql["host"], auth_mysql["port"]) as proxy:
        server = AuthServer(tmp_path / "auth.log", auth_db_name, proxy.port)
        try:
            server.wait_status(SERVING)
            email = unique_email("outage")
            sign_up(server.stub, email)
            token = login(server.stub, email).access_token
            bearer = [("authorization", f"Bearer {token}")]

            getattr(proxy, fault)()
            _assert_unavailable(rpc_error(server.stub.Login, auth_pb2.LoginRequest(
                email=email, password="correct horse battery")))
            _assert_unavailable(rpc_error(server.stub.SignUp, auth_pb2.SignUpRequest(
                email=unique_email("outage"), password="long enough password")))
            _assert_unavailable(rpc_error(server.stub.GetMe, auth_pb2.GetMeRequest(), metadata=bearer))
            server.wait_status(NOT_SERVING, timeout=20)
            # Validation does not need the database and still answers precisely.
            err = rpc_error(server.stub.SignUp, auth_pb2.SignUpRequest(email="bad", password="long enough password"))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

            proxy.restore()
            server.wait_status(SERVING, timeout=20)
            assert login(server.stub, email).token_type == "Bearer"
            assert sign_up(server.stub, unique_email("after")).id
            assert server.stub.GetMe(auth_pb2.GetMeRequest(), metadata=bearer, timeout=RPC_TIMEOUT).email == email
        finally:
            rc = server.stop()
        assert rc == 0, server.log()


def test_start_while_mysql_is_down_then_create_the_schema_when_it_returns(
        auth_mysql, auth_databases, tmp_path):
    db = f"video2mp3_test_{secrets.token_hex(4)}_cold"
    auth_databases.append(db)
    proxy = TcpProxy(auth_mysql["host"], auth_mysql["port"]).start()
    proxy.cut()  # the port is known, nothing listens on it
    server = AuthServer(tmp_path / "auth.log", db, proxy.port)
    try:
        server.wait_status(NOT_SERVING)
        _assert_unavailable(rpc_error(server.stub.SignUp, auth_pb2.SignUpRequest(
            email=unique_email("cold"), password="long enough password")))
        _assert_unavailable(rpc_error(server.stub.Login, auth_pb2.LoginRequest(
            email=unique_email("cold"), password="long enough password")))

        proxy.restore()
        server.wait_status(SERVING)
        email = unique_email("cold")
        sign_up(server.stub, email)
        assert login(server.stub, email).access_token
    finally:
        rc = server.stop()
        proxy.stop()
    assert rc == 0, server.log()
    con = pymysql.connect(connect_timeout=3, database=db, **auth_mysql)
    try:
        with con.cursor() as cur:
            cur.execute("SHOW COLUMNS FROM users")
            assert [row[0] for row in cur.fetchall()] == ["id", "email", "password", "created_at"]
    finally:
        con.close()


def test_a_seed_table_without_created_at_is_extended(auth_mysql, auth_databases, tmp_path):
    db = f"video2mp3_test_{secrets.token_hex(4)}_seed"
    auth_databases.append(db)
    con = pymysql.connect(connect_timeout=3, autocommit=True, **auth_mysql)
    try:
        with con.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{db}`")
            cur.execute(f"CREATE TABLE `{db}`.users (id INT AUTO_INCREMENT PRIMARY KEY, "
                        "email VARCHAR(255) UNIQUE NOT NULL, password VARCHAR(255) NOT NULL)")
            # A seed row with a plain-text password: never compared as text.
            cur.execute(f"INSERT INTO `{db}`.users (email, password) VALUES ('seed@example.com', 'plaintext1')")
    finally:
        con.close()
    server = AuthServer(tmp_path / "auth.log", db, auth_mysql["port"])
    try:
        server.wait_status(SERVING)
        err = rpc_error(server.stub.Login, auth_pb2.LoginRequest(email="seed@example.com", password="plaintext1"))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        email = unique_email("seed")
        user = sign_up(server.stub, email)
        assert user.create_time.seconds > 0
    finally:
        rc = server.stop()
    assert rc == 0, server.log()
