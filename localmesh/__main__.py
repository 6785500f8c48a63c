"""`make run`: the whole mesh in the foreground.

Checks that MySQL and RabbitMQ answer, then starts SecantusDB (unless
MONGO_URI is set), auth, gateway, converter and Envoy, waits until each is
up, prints where the web page, REST and gRPC are served and stays in the
foreground.
Ctrl-C (or SIGTERM) stops every process it started: Envoy first, then the
services (SIGTERM, so they finish in-flight work within GRACE_SECONDS), then
SecantusDB. A child that dies on its own is logged (which, exit code or
signal, OOM kill when the cgroup counted one) and restarted with backoff.

Configuration (environment, with defaults):
  MYSQL_HOST 127.0.0.1, MYSQL_PORT 3306          checked, then passed through
  RABBITMQ_HOST 127.0.0.1, RABBITMQ_PORT 5672    checked, then passed through
  MONGO_URI        unset: start SecantusDB on MONGO_PORT (27017) with its data
                   in MONGO_DATA_DIR (./data/mongo, kept across restarts)
  AUTH_PORT 50051, MEDIA_PORT 50052, ENVOY_PORT 8000, ENVOY_ADMIN_PORT 9901
  AUTH_METRICS_PORT 9101, MEDIA_METRICS_PORT 9102, CONVERTER_METRICS_PORT 9103,
  ENVOY_METRICS_PORT 9902   Prometheus endpoints (0: off)
  LOG_FORMAT       text here (readable in a terminal); the services' default is json
  WEBHOOK_ALLOW_PRIVATE  true here, so a webhook receiver on 127.0.0.1 works on
                   a laptop; the gateway's default (and production's) is false
  AUTH_ADDR        where the gateway reaches auth (127.0.0.1:AUTH_PORT)
  AUTH_KEYS_DIR    auth's signing keys; unset: ./data/keys, where a key is
                   generated (mode 0600) on first start and reused after
  QUEUE_NAME video the queue the converter consumes (to know it is ready)
  GRACE_SECONDS    the services' shutdown grace; we SIGKILL 5 s after it
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

from localmesh.processes import (
    Child,
    ChildDied,
    port_is_open,
    secantusd_argv,
    secantusd_env,
    stop_all,
    wait_for_mongo,
)
from localmesh.settings import MeshSettings
from localmesh.stack import Stack
from localmesh.supervise import Supervisor
from video2mp3.auth.keys import ensure_key
from video2mp3.core.settings import MongoSettings, is_set, load
from video2mp3.ops import envoy_config

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0


class _Stop(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM."""


def _say(text: str = "") -> None:
    print(f"{'mesh':<10}| {text}" if text else "", flush=True)


def _fail(text: str) -> NoReturn:
    print(text, file=sys.stderr, flush=True)
    raise SystemExit(1)


def preflight(mesh: MeshSettings) -> None:
    """One clear line per problem, then exit 1: no traceback."""
    problems = []
    mysql = (mesh.auth.mysql.host, mesh.auth.mysql.port)
    if not port_is_open(*mysql, timeout=2):
        problems.append(
            f"MySQL is not reachable at {mysql[0]}:{mysql[1]} — start it (e.g. "
            "`start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd`) "
            "or set MYSQL_HOST/MYSQL_PORT"
        )
    rabbit = (mesh.gateway.rabbit.host, mesh.gateway.rabbit.port)
    if not port_is_open(*rabbit, timeout=2):
        problems.append(
            f"RabbitMQ is not reachable at {rabbit[0]}:{rabbit[1]} — start it (e.g. "
            "`rabbitmq-server -detached`) or set RABBITMQ_HOST/RABBITMQ_PORT"
        )
    if not envoy_config.DESCRIPTOR.exists():
        problems.append(f"{envoy_config.DESCRIPTOR.relative_to(ROOT)} is missing — run `make protos`")
    if problems:
        _fail("\n".join(problems))


def main() -> int:
    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "text")  # a terminal, not a log pipeline
    # Local development: webhooks may go to a receiver on this machine
    # (gateway/safe_http.py; never set in deploy/).
    env.setdefault("WEBHOOK_ALLOW_PRIVATE", "true")
    mesh = load(MeshSettings, env)  # a bad value exits here with one line
    preflight(mesh)
    embedded_mongo = not is_set(MongoSettings, "uri", env)
    _check_ports_free(mesh, embedded_mongo)

    env.update(
        AUTH_PORT=str(mesh.auth.port),
        MEDIA_PORT=str(mesh.gateway.port),
        ENVOY_PORT=str(mesh.envoy.port),
        ENVOY_ADMIN_PORT=str(mesh.envoy.admin_port),
    )
    if mesh.auth.keys_dir is None:
        env["AUTH_KEYS_DIR"] = str(_local_signing_key())
    # make run is for humans: a converter that is slow to attach to its queue
    # is reported, not fatal.
    stack = Stack(env, require_consumer=False, start_timeout=START_TIMEOUT)
    mongo: Child | None = None

    def on_signal(signum, _frame):
        raise _Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    exit_code = 0
    try:
        if embedded_mongo:
            data_dir = mesh.mongo_data_dir.resolve()
            data_dir.mkdir(parents=True, exist_ok=True)
            mongo = Child(
                "mongo", secantusd_argv(mesh.mongo_port, data_dir, compact_every_s=mesh.mongo_compact_s),
                env=secantusd_env(env), cwd=data_dir
            ).start()
            _use_mongo(stack, mongo, mesh.mongo_port, data_dir)
        _start_services(stack, mesh.converter.rabbit.queue)
        _say_where(stack)
        _supervise(stack, mongo)
    except _Stop as why:
        if str(why):
            _say(f"got {why}, stopping")
    except (ChildDied, TimeoutError) as e:
        _say(f"startup failed: {e}")
        exit_code = 1
    finally:
        signal.signal(signal.SIGINT, lambda *_: _say("already stopping…"))
        signal.signal(signal.SIGTERM, lambda *_: _say("already stopping…"))
        # Envoy first (no new requests), then the services drain, then the DB.
        stack.close()
        if mongo is not None and mongo.alive:
            stop_all([mongo], deadline=15)
    _say("stopped")
    return exit_code


def _check_ports_free(mesh: MeshSettings, embedded_mongo: bool) -> None:
    """Exit with one line if a port the mesh would listen on is taken."""
    ports = {
        "AUTH_PORT": mesh.auth.port,
        "MEDIA_PORT": mesh.gateway.port,
        "ENVOY_PORT": mesh.envoy.port,
        "ENVOY_ADMIN_PORT": mesh.envoy.admin_port,
        "AUTH_METRICS_PORT": mesh.auth.metrics_port,
        "MEDIA_METRICS_PORT": mesh.gateway.metrics_port,
        "CONVERTER_METRICS_PORT": mesh.converter.metrics_port,
        "ENVOY_METRICS_PORT": mesh.envoy.metrics_port,
    }
    ports = {name: port for name, port in ports.items() if port}
    if embedded_mongo:
        ports["MONGO_PORT"] = mesh.mongo_port
    busy = [f"{port} ({name})" for name, port in ports.items() if port_is_open("127.0.0.1", port)]
    if busy:
        _fail(
            f"port {', '.join(busy)} already in use — is another `make run` still running? "
            "Stop it or choose other ports"
        )


def _local_signing_key() -> Path:
    """./data/keys, with a token signing key generated on first start."""
    keys_dir = (ROOT / "data" / "keys").resolve()
    if ensure_key(keys_dir):
        _say(f"generated a token signing key in {keys_dir}")
    return keys_dir


def _use_mongo(stack: Stack, mongo: Child, port: int, data_dir: Path) -> None:
    """Wait for the started SecantusDB, then point the services at it."""
    # directConnection: talk to exactly this address, whatever the server
    # says (it runs standalone; a replica set advertises a member address).
    uri = f"mongodb://127.0.0.1:{port}/video2mp3?directConnection=true"
    wait_for_mongo(uri, timeout=START_TIMEOUT, child=mongo)
    stack.env["MONGO_URI"] = uri
    stack.env["MONGO_DATA_DIR"] = str(data_dir)  # the gateway's disk-space guard
    _say(f"SecantusDB up at {uri} (data in {data_dir})")


def _start_services(stack: Stack, queue: str) -> None:
    """auth, gateway and converter together, each waited for; then Envoy in front."""
    for name in ("auth", "gateway", "converter"):
        stack.child(name).start()
    stack.wait_ready("auth")
    _say(f"auth up on {stack.auth_addr}")
    stack.wait_ready("gateway")
    _say(f"gateway (MediaService) up on {stack.media_addr}")
    if stack.wait_ready("converter"):
        _say(f"converter consuming queue {queue!r}")
    else:
        _say(f"converter running, but not consuming queue {queue!r} yet")
    stack.start(["envoy"])
    _say(f"envoy up on {stack.envoy_addr}")


def _say_where(stack: Stack) -> None:
    _say()
    _say("video2mp3 is up.")
    _say(f"  Web   {stack.rest_base_url}/          open it in a browser")
    _say(f"  REST  {stack.rest_base_url}          e.g. curl {stack.rest_base_url}/health")
    _say(f"  gRPC  {stack.envoy_addr} via Envoy     e.g. grpcurl -plaintext {stack.envoy_addr} list")
    _say(f"        direct: auth {stack.auth_addr}, media {stack.media_addr}")
    _say(f"  Envoy admin  {stack.envoy_admin_url}")
    for name, url in stack.metrics_urls.items():
        _say(f"  metrics  {name:<10} {url}")
    _say("Press Ctrl-C to stop everything.")
    _say()


def _supervise(stack: Stack, mongo: Child | None) -> NoReturn:
    """Until a signal: a child that dies is logged and restarted with backoff (localmesh/supervise.py)."""
    supervisor = Supervisor(_say)
    while True:
        supervisor.check(([mongo] if mongo else []) + list(stack.children.values()))
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
