"""Throw-away dependencies for a mesh: what the tests and `make soak` share.

The machine's MariaDB and RabbitMQ are used, never started or stopped: each
run gets its own MySQL database and queue name, removed afterwards. MongoDB
is an in-memory SecantusDB started here on a free port.

    with Testbed(log_dir) as bed:           # SecantusDB up, database created, queue named
        env = bed.service_env()              # everything a Stack needs, fresh ports
        with Stack(env, log_dir=log_dir) as stack:
            ...

tests/conftest.py builds its session fixtures from the same functions.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

from localmesh.processes import Child, free_port, secantusd_argv, wait_for_mongo
from video2mp3.core.settings import MysqlSettings, RabbitSettings, as_env, load
from video2mp3.domain.queue import connection_parameters

# Names a service may derive from the main queue (dead-lettering, retries).
QUEUE_COMPANIONS = ("", ".dead", ".dlx", ".retry", ".delay", ".express", ".express.dead", ".final")


def hex_id() -> str:
    return uuid.uuid4().hex[:12]


# ------------------------------------------------------------------ MySQL

def mysql_settings(environ: Mapping[str, str] = os.environ) -> dict:
    """pymysql.connect() arguments from MYSQL_* (default 127.0.0.1:3306 root, no password)."""
    s = load(MysqlSettings, environ)
    return dict(host=s.host, port=s.port, user=s.user, password=s.password)


def _admin_sql(server: dict, sql: str) -> None:
    import pymysql

    conn = pymysql.connect(**server, connect_timeout=5, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def create_mysql_db(server: dict, name: str) -> dict:
    """Create database `name`; return the MYSQL_* env vars that point at it."""
    _admin_sql(server, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    return {
        "MYSQL_HOST": server["host"],
        "MYSQL_PORT": str(server["port"]),
        "MYSQL_USER": server["user"],
        "MYSQL_PASSWORD": server["password"],
        "MYSQL_DB": name,
    }


def drop_mysql_db(server: dict, name: str) -> None:
    import pymysql

    with contextlib.suppress(pymysql.MySQLError):
        _admin_sql(server, f"DROP DATABASE IF EXISTS `{name}`")


# ---------------------------------------------------------------- RabbitMQ

def rabbit_env(environ: Mapping[str, str] = os.environ) -> dict:
    """RABBITMQ_* env vars (default 127.0.0.1:5672 guest/guest, vhost /)."""
    return as_env(load(RabbitSettings, environ), "host", "port", "user", "password", "vhost")


def rabbit_connection(env: Mapping[str, str]):
    """A pika BlockingConnection with the services' own parameters for `env`'s RABBITMQ_*."""
    import pika

    return pika.BlockingConnection(connection_parameters(load(RabbitSettings, env)))


def check_rabbit(env: Mapping[str, str]) -> None:
    """Raises if RabbitMQ does not accept a connection."""
    rabbit_connection(env).close()


def queue_depth(env: Mapping[str, str], queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of a queue."""
    with rabbit_connection(env) as conn:
        ok = conn.channel().queue_declare(queue, passive=True)
        return ok.method.message_count, ok.method.consumer_count


def publish_raw(env: Mapping[str, str], queue: str, bodies: list[bytes]) -> None:
    """Publish task messages as the gateway does (persistent, confirmed)."""
    import pika

    with rabbit_connection(env) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        for body in bodies:
            ch.basic_publish("", queue, body, pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json"),
                mandatory=True)


def delete_queues(env: Mapping[str, str], name: str) -> None:
    """Delete queue `name` and its companions (QUEUE_COMPANIONS), ignoring missing ones."""
    try:
        conn = rabbit_connection(env)
    except Exception:  # noqa: BLE001 - pika raises many kinds
        return
    try:
        for suffix in QUEUE_COMPANIONS:
            # A failed delete closes the channel, so one channel per attempt.
            for kind in ("queue", "exchange"):
                with contextlib.suppress(Exception):
                    ch = conn.channel()
                    if kind == "queue":
                        ch.queue_delete(name + suffix)
                    elif suffix:  # never an exchange named exactly like the queue
                        ch.exchange_delete(name + suffix)
                    ch.close()
    finally:
        with contextlib.suppress(Exception):
            conn.close()


# -------------------------------------------------------------- SecantusDB

def mongo_uri(host: str, port: int, db: str) -> str:
    # directConnection: talk to exactly this address (a proxy placed in front
    # of the store, in fault tests), whatever the server says its address is
    # (a replica-set member's, were it one).
    return f"mongodb://{host}:{port}/{db}?directConnection=true"


# In memory, the cache holds every byte stored: room for a whole test session.
def start_mongo(log_dir: str | os.PathLike, *, cache_size: str = "2G",
                timeout: float = 60) -> tuple[Child, int]:
    """An in-memory SecantusDB on a free port, waited for. Returns (child, port);
    raises (after stopping it) if it does not come up."""
    port = free_port()
    log_dir = Path(log_dir)
    child = Child(
        "mongo", secantusd_argv(port, ":memory:", cache_size=cache_size),
        cwd=log_dir, log_path=log_dir / "mongo.log",
    ).start()
    try:
        wait_for_mongo(mongo_uri("127.0.0.1", port, "admin"), timeout=timeout, child=child)
    except BaseException:
        child.stop(5)
        raise
    return child, port


# --------------------------------------------------------------- the mesh

def fresh_ports(env: Mapping[str, str]) -> dict:
    """`env` with new free ports for auth, gateway and Envoy, and for each one's metrics."""
    auth_port, media_port = free_port(), free_port()
    return dict(
        env,
        AUTH_PORT=str(auth_port),
        AUTH_ADDR=f"127.0.0.1:{auth_port}",
        MEDIA_PORT=str(media_port),
        MEDIA_ADDR=f"127.0.0.1:{media_port}",
        ENVOY_PORT=str(free_port()),
        ENVOY_ADMIN_PORT=str(free_port()),
        ENVOY_METRICS_PORT=str(free_port()),
        AUTH_METRICS_PORT=str(free_port()),
        MEDIA_METRICS_PORT=str(free_port()),
        CONVERTER_METRICS_PORT=str(free_port()),
    )


def new_keys_dir(path: str | os.PathLike) -> str:
    """A directory holding one fresh Ed25519 signing key (this run's own)."""
    from video2mp3.auth.keys import ensure_key

    ensure_key(Path(path))
    return str(path)


def signing_key(env: Mapping[str, str]):
    """The mesh's current signing key (auth.keys.SigningKey), for tests that
    must forge exactly what auth would sign (an expired token, say)."""
    from video2mp3.auth.keys import load_dir

    return load_dir(Path(env["AUTH_KEYS_DIR"]))[-1]


def mesh_env(*, mysql: Mapping[str, str], rabbit: Mapping[str, str], mongo_uri: str, queue: str,
             keys_dir: str | os.PathLike, base: Mapping[str, str] = os.environ, **overrides) -> dict:
    """Everything the services need, on fresh ports: `base` (the caller's
    environment) with MySQL, RabbitMQ, MongoDB, the queue and the signing
    keys (`keys_dir`, see new_keys_dir) replaced."""
    env = dict(base)
    env.pop("SECRET_KEY", None)  # gone; never let one leak in
    env.update(mysql)
    env.update(rabbit)
    env.update(
        MONGO_URI=mongo_uri,
        QUEUE_NAME=queue,
        AUTH_KEYS_DIR=new_keys_dir(keys_dir),
        # Deleted users' tokens stop working within this long.
        USER_CACHE_TTL_S="1",
        CONVERTER_WORKERS="1",
        # No express lane unless a test asks for it (tests/e2e/test_fair_queue.py,
        # the soak): the others count and kill "the" worker of a job.
        CONVERTER_EXPRESS_WORKERS="0",
        GRACE_SECONDS="5",
        # Webhooks: a receiver of the tests' own on 127.0.0.1 is allowed, and
        # nothing a test (or the fuzzer) registers can make a mesh deliver
        # anywhere but loopback (gateway/safe_http.py).
        WEBHOOK_ALLOW_PRIVATE="true",
        WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8,::1/128",
        LOG_LEVEL=base.get("TEST_LOG_LEVEL") or "INFO",
    )
    env = fresh_ports(env)
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class Testbed:
    """A SecantusDB, a MySQL database and a queue name of our own (see the module doc)."""

    def __init__(self, log_dir: str | os.PathLike, environ: Mapping[str, str] = os.environ):
        self.log_dir = Path(log_dir)
        self.environ = dict(environ)
        self.mysql_server = mysql_settings(environ)
        self.rabbit = rabbit_env(environ)
        self.queue = f"video_bed_{hex_id()}"
        self.db_name = f"v2m_bed_{hex_id()}"
        self.mysql: dict = {}
        self.mongo: Child | None = None
        self.mongo_port = 0

    def start(self) -> Testbed:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        check_rabbit(self.rabbit)
        self.mysql = create_mysql_db(self.mysql_server, self.db_name)
        try:
            self.mongo, self.mongo_port = start_mongo(self.log_dir)
        except BaseException:
            drop_mysql_db(self.mysql_server, self.db_name)
            raise
        return self

    def mongo_uri(self, port: int | None = None, db: str | None = None) -> str:
        """The URI of our database, optionally through another port (a proxy)."""
        return mongo_uri("127.0.0.1", port or self.mongo_port, db or self.db_name)

    def service_env(self, *, mongo_port: int | None = None, rabbit_port: int | None = None,
                    **overrides) -> dict:
        """The services' environment; `mongo_port` / `rabbit_port` route them through proxies."""
        rabbit = dict(self.rabbit)
        if rabbit_port:
            rabbit["RABBITMQ_PORT"] = str(rabbit_port)
        return mesh_env(mysql=self.mysql, rabbit=rabbit, mongo_uri=self.mongo_uri(mongo_port),
                        queue=self.queue, keys_dir=self.log_dir / "keys", base=self.environ, **overrides)

    def close(self) -> None:
        delete_queues(self.rabbit, self.queue)
        if self.mysql:
            drop_mysql_db(self.mysql_server, self.db_name)
        if self.mongo is not None:
            self.mongo.stop(15)

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
