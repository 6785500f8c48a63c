"""Session fixtures shared by the whole suite: the real servers and the mesh.

Levels: each folder is one, and its tests get its marker (`pytest -m unit`):

  unit/         no server at all: pure logic, PyAV on files made here, tooling
                (buf, the OpenAPI document, offline manifest checks) and
                in-process gRPC servers. `make test-unit`, well under a minute.
  integration/  one real component at a time: SecantusDB, MariaDB, Envoy.
  e2e/          the whole mesh (auth, gateway, converter, Envoy), as users reach it.
  faults/       the mesh while things break: kills, cuts, full limits, hostile
                files; and the long scenarios (soak, big files), also `slow`.

A unit test that asks for a server fixture is an error, so levels stay honest.

Dependencies (the machine's shared servers are checked, never started or stopped):

  mysql_server     MariaDB at MYSQL_HOST:MYSQL_PORT (127.0.0.1:3306, root, no
                   password) answers, else the test FAILS saying how to start it.
                   -> dict(host, port, user, password)
  mysql_db         a fresh database `v2m_test_<hex>`, dropped at session end.
                   -> dict of MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD, MYSQL_DB
  rabbitmq_server  RabbitMQ at RABBITMQ_HOST:RABBITMQ_PORT (127.0.0.1:5672,
                   guest/guest) answers, else FAIL.
                   -> dict of RABBITMQ_HOST, RABBITMQ_PORT, RABBITMQ_USER,
                      RABBITMQ_PASSWORD, RABBITMQ_VHOST
  queue_name       `video_test_<hex>`; at session end the queue and its companions
                   (`<name>.dead`, `.dlx`, `.retry`, `.delay`) are deleted.
  mongo_server     our own SecantusDB (`secantusd-py --storage-path :memory:`) on a
                   free port, stopped at session end.
                   -> MongoURI: a str, `mongodb://127.0.0.1:PORT/v2m_test_<hex>?directConnection=true`,
                      with .host .port .db .child and .via(host, port) for a
                      proxied URI (fault tests).

The mesh (real `python -m video2mp3.auth|gateway|converter` processes and Envoy):

  mesh_env         the full environment for the services: os.environ plus
                   MYSQL_*, MONGO_URI, RABBITMQ_*, QUEUE_NAME, AUTH_KEYS_DIR (a
                   fresh Ed25519 key of this run), USER_CACHE_TTL_S=1,
                   AUTH_PORT, MEDIA_PORT, ENVOY_PORT, ENVOY_ADMIN_PORT, AUTH_ADDR, MEDIA_ADDR,
                   CONVERTER_WORKERS=1, GRACE_SECONDS, LOG_LEVEL.
  mesh             session-wide localmesh.stack.Stack, all four processes up and ready
                   (gRPC health SERVING / consuming / listening):
                   .auth_addr .media_addr .envoy_addr .rest_base_url .envoy_admin_url
                   .env (what the services got) .logs {name: Path} .log_dir
                   .kill(name) .stop_service(name) .start_service(name, env=None)
                   .restart(name) .log_tail(name) .describe_logs()
                   .child(name) -> localmesh.processes.Child (.pid, .alive,
                   .descendants() e.g. the converter's worker PIDs, .signal(sig))
                   When a test that uses it fails, the report gets each
                   process's state and last log lines.
  mesh_control     function-scoped: the same `mesh`, for tests that kill, stop or
                   reconfigure services. At teardown every service is running
                   again with the session's env (restarted and waited for), so
                   the next test gets a healthy mesh.
  mesh_factory     function-scoped: mesh_factory(**env_overrides) starts a SEPARATE
                   mesh (fresh ports, own logs; same databases and queue unless
                   overridden), e.g. with MONGO_URI through a TCP proxy or a small
                   MAX_UPLOAD_BYTES; stopped at test end. services=(...) picks which.
  module_mesh_factory  the same, its meshes kept for the whole test module.

Settings for the test run (environment): MYSQL_HOST/PORT/USER/PASSWORD,
RABBITMQ_HOST/PORT/USER/PASSWORD/VHOST as above; TEST_LOG_LEVEL (INFO) for the
services' LOG_LEVEL.
"""
from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmesh.processes import Child
from localmesh.stack import SERVICES, Stack
from testkit import testbed
from video2mp3.core.settings import MongoSettings
from video2mp3.storage.mongo import Mongo

ROOT = Path(__file__).resolve().parent.parent


def _hex() -> str:
    return uuid.uuid4().hex[:12]


# ------------------------------------------------------------------ MariaDB

@pytest.fixture(scope="session")
def mysql_server() -> dict:
    """MariaDB/MySQL as configured (default 127.0.0.1:3306 root, no password).
    Fails, never skips, when it does not answer."""
    import pymysql

    cfg = testbed.mysql_settings()
    try:
        conn = pymysql.connect(**cfg, connect_timeout=5)
        conn.close()
    except pymysql.MySQLError as e:
        pytest.fail(
            f"MySQL/MariaDB is not usable at {cfg['host']}:{cfg['port']} as {cfg['user']!r}: {e}. "
            "Start it (e.g. `start-stop-daemon --start --oknodo --background --exec "
            "/usr/sbin/mariadbd`) or set MYSQL_HOST/MYSQL_PORT/MYSQL_USER/MYSQL_PASSWORD.",
            pytrace=False,
        )
    return cfg


@pytest.fixture(scope="session")
def mysql_db(mysql_server) -> Iterator[dict]:
    """A database of our own for this run, dropped at the end. Yields MYSQL_* env vars."""
    name = f"v2m_test_{_hex()}"
    yield testbed.create_mysql_db(mysql_server, name)
    testbed.drop_mysql_db(mysql_server, name)


# ------------------------------------------------------------------ RabbitMQ

@pytest.fixture(scope="session")
def rabbitmq_server() -> dict:
    """RabbitMQ as configured (default 127.0.0.1:5672 guest/guest, vhost /).
    Fails, never skips, when it does not answer. Yields RABBITMQ_* env vars."""
    env = testbed.rabbit_env()
    try:
        testbed.check_rabbit(env)
    except Exception as e:  # noqa: BLE001 - pika raises many kinds
        pytest.fail(
            f"RabbitMQ is not usable at {env['RABBITMQ_HOST']}:{env['RABBITMQ_PORT']} as "
            f"{env['RABBITMQ_USER']!r}: {e!r}. Start it (e.g. `rabbitmq-server -detached`) "
            "or set RABBITMQ_HOST/RABBITMQ_PORT/RABBITMQ_USER/RABBITMQ_PASSWORD.",
            pytrace=False,
        )
    return env


# Names a service may derive from the main queue (dead-lettering, retries).
QUEUE_COMPANIONS = testbed.QUEUE_COMPANIONS
# Delete queue `name` and its companions, ignoring missing ones.
delete_queues = testbed.delete_queues


@pytest.fixture(scope="session")
def queue_name(rabbitmq_server) -> Iterator[str]:
    """A queue name of our own for this run; it and its companions are deleted at the end."""
    name = f"video_test_{_hex()}"
    yield name
    delete_queues(rabbitmq_server, name)


# ------------------------------------------------------------------ SecantusDB

class MongoURI(str):
    """The MongoDB URI of the test SecantusDB, plus what fault tests need."""

    host: str
    port: int
    db: str
    child: Child

    def __new__(cls, host: str, port: int, db: str, child: Child):
        self = super().__new__(cls, cls.build(host, port, db))
        self.host, self.port, self.db, self.child = host, port, db, child
        return self

    # mongodb://host:port/db?directConnection=true (see testkit/testbed.py)
    build = staticmethod(testbed.mongo_uri)

    def via(self, host: str, port: int) -> str:
        """The same database reached through host:port (a TcpProxy)."""
        return self.build(host, port, self.db)

    @contextlib.contextmanager
    def scratch(self, prefix: str) -> Iterator[Mongo]:
        """A client on a database of its own (`prefix_<hex>`), dropped afterwards."""
        m = Mongo(MongoSettings(uri=self.build(self.host, self.port, f"{prefix}_{_hex()}"), timeout_ms=5000))
        try:
            yield m
        finally:
            m.client.drop_database(m.db.name)
            m.close()


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory) -> Iterator[MongoURI]:
    """An in-memory SecantusDB for this run. Yields its URI (with a unique db name)."""
    log_dir = tmp_path_factory.mktemp("mongo")
    try:
        child, port = testbed.start_mongo(log_dir)
        why = None
    except Exception as e:  # noqa: BLE001 - ChildDied, TimeoutError
        why = str(e).splitlines()[0]
    if why:
        tail = (log_dir / "mongo.log").read_text(errors="replace")[-4000:] \
            if (log_dir / "mongo.log").exists() else ""
        pytest.fail(f"SecantusDB did not start: {why}\n{tail}", pytrace=False)
    yield MongoURI("127.0.0.1", port, f"v2m_test_{_hex()}", child)
    child.stop(15)


# ------------------------------------------------------------------ the mesh

@pytest.fixture(scope="session")
def mesh_env(mysql_db, rabbitmq_server, mongo_server, queue_name, tmp_path_factory) -> dict:
    """Everything the services need, pointing at this run's databases, queue and signing key."""
    # Never let a developer's MONGO_URI etc. leak in: ours replace them.
    return testbed.mesh_env(mysql=mysql_db, rabbit=rabbitmq_server, mongo_uri=str(mongo_server),
                            queue=queue_name, keys_dir=tmp_path_factory.mktemp("keys"))


_fresh_ports = testbed.fresh_ports


# Stacks alive right now, so a failed test's report can show their logs.
_LIVE_STACKS: list[Stack] = []


def _start_stack(env: dict, log_dir: Path, services=SERVICES) -> Stack:
    stack = Stack(env, log_dir=log_dir)
    _LIVE_STACKS.append(stack)
    try:
        stack.start(services)
        return stack
    except Exception as e:  # noqa: BLE001 - ChildDied, TimeoutError
        why = str(e).splitlines()[0]
    details = stack.describe_logs()
    _stop_stack(stack)
    pytest.fail(f"the mesh did not start: {why}\n{details}", pytrace=False)


def _stop_stack(stack: Stack) -> None:
    stack.close()
    with contextlib.suppress(ValueError):
        _LIVE_STACKS.remove(stack)


@pytest.fixture(scope="session")
def mesh(mesh_env, tmp_path_factory) -> Iterator[Stack]:
    """auth, gateway, converter and Envoy, running for the whole session."""
    log_dir = tmp_path_factory.mktemp("mesh")
    stack = _start_stack(mesh_env, log_dir)
    yield stack
    _stop_stack(stack)


@pytest.fixture
def mesh_control(mesh) -> Iterator[Stack]:
    """The session mesh, for a test that kills, stops or reconfigures services.
    Afterwards every service runs again with the session's environment."""
    yield mesh
    for name in SERVICES:
        c = mesh.children.get(name)
        if c is not None and (c.env != mesh.env or not c.alive):
            mesh.start_service(name, env=mesh.env)


@pytest.fixture
def mesh_factory(mesh_env, rabbitmq_server, tmp_path_factory):
    """mesh_factory(services=SERVICES, **env_overrides) -> a separate, started
    Stack with fresh ports and, unless QUEUE_NAME is overridden, its own queue
    (deleted afterwards), so the session converter never takes its jobs. It
    shares the session's MySQL database and MongoDB. Stopped at test end."""
    yield from _mesh_factory(mesh_env, rabbitmq_server, tmp_path_factory)


@pytest.fixture(scope="module")
def module_mesh_factory(mesh_env, rabbitmq_server, tmp_path_factory):
    """mesh_factory's meshes, kept for the whole test module."""
    yield from _mesh_factory(mesh_env, rabbitmq_server, tmp_path_factory)


def _mesh_factory(mesh_env, rabbitmq_server, tmp_path_factory):
    started: list[Stack] = []
    queues: list[str] = []

    def make(services=SERVICES, **overrides) -> Stack:
        env = _fresh_ports(mesh_env)
        if "QUEUE_NAME" not in overrides:
            env["QUEUE_NAME"] = f"{mesh_env['QUEUE_NAME']}_{_hex()[:6]}"
            queues.append(env["QUEUE_NAME"])
        env.update({k: str(v) for k, v in overrides.items()})
        stack = _start_stack(env, tmp_path_factory.mktemp("mesh-extra"), services)
        started.append(stack)
        return stack

    yield make
    for stack in reversed(started):
        _stop_stack(stack)
    for q in queues:
        delete_queues(rabbitmq_server, q)


# ------------------------------------------------------------------ shared by the fault tests

@pytest.fixture(scope="session")
def store(mongo_server):
    """Direct access to the session's MongoDB (not through any proxy): jobs, MP3s, chunks."""
    from testkit.faults import Store

    s = Store(mongo_server)
    yield s
    s.close()


@pytest.fixture(scope="session")
def clip(tmp_path_factory):
    """A 2-second H.264 + 440 Hz AAC MP4."""
    from testkit.media import make_media

    return make_media(tmp_path_factory.mktemp("clip") / "clip.mp4", duration=2.0)


LEVELS = ("unit", "integration", "e2e", "faults")
# Fixtures that reach a server; a unit test may use none of them.
SERVER_FIXTURES = {"mysql_server", "mysql_db", "rabbitmq_server", "queue_name", "mongo_server", "store",
                   "mesh_env", "mesh", "mesh_control", "mesh_factory", "module_mesh_factory"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        level = Path(item.fspath).relative_to(ROOT / "tests").parts[0]
        if level in LEVELS:
            item.add_marker(getattr(pytest.mark, level))
        servers = sorted(SERVER_FIXTURES & set(item.fixturenames))
        if level == "unit" and servers:
            raise pytest.UsageError(f"{item.nodeid} is a unit test but uses {servers}: move it to the level it needs")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach each live mesh process's state and log tail to the report."""
    outcome = yield
    report = outcome.get_result()
    uses_mesh = {"mesh", "mesh_control", "mesh_factory", "module_mesh_factory"} & set(
        getattr(item, "fixturenames", ()))
    if report.failed and uses_mesh and _LIVE_STACKS:
        for i, stack in enumerate(_LIVE_STACKS):
            where = f" ({stack.log_dir})" if stack.log_dir else ""
            report.sections.append((f"mesh #{i + 1} logs{where}", stack.describe_logs()))
