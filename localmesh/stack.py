"""The four mesh processes (auth, gateway, converter, Envoy) as one object.

`python -m localmesh` and the test fixtures both use it, so the services are
started, checked and stopped the same way everywhere:

    stack = Stack(env, log_dir=tmp)     # env: MYSQL_*, MONGO_URI, RABBITMQ_*, ports...
    stack.start()                        # all four, each waited for until ready
    stack.kill("converter")              # SIGKILL (fault tests)
    stack.start_service("converter")     # and back, waited for
    stack.close()                        # Envoy, then the services (SIGTERM -> SIGKILL)

Ready means: auth and gateway answer grpc.health.v1 Check("") with SERVING,
the converter is a consumer on QUEUE_NAME (it has no port), Envoy accepts
connections on ENVOY_PORT.
"""
from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

from localmesh.processes import (
    Child,
    stop_all,
    wait_for_grpc_health,
    wait_for_port,
    wait_for_queue_consumer,
)
from localmesh.settings import MeshSettings
from video2mp3.auth.config import AuthConfig
from video2mp3.core.logging import LogSettings
from video2mp3.core.settings import AuthEndpoint, MediaEndpoint, RabbitSettings, is_set, load
from video2mp3.gateway.config import GatewayConfig
from video2mp3.ops import envoy_config

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("auth", "gateway", "converter", "envoy")
PYTHON_SERVICES = ("auth", "gateway", "converter")


def service_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` plus what every Python child needs: unbuffered output, bounded
    malloc arenas, AUTH_ADDR and MEDIA_ADDR defaulting to the local auth and gateway."""
    out = dict(env)
    out["PYTHONUNBUFFERED"] = "1"
    # glibc gives each thread that allocates its own heap (up to 8 per core);
    # an upload's MB-sized buffers, made on one thread and freed on another,
    # left ~60 MB of those heaps' free space resident in the gateway (peak RSS
    # during an upload 175 MB; 115 MB with 2). Same in deploy/docker/Dockerfile.
    out.setdefault("MALLOC_ARENA_MAX", "2")
    if not is_set(AuthEndpoint, "addr", out):
        out["AUTH_ADDR"] = f"127.0.0.1:{load(AuthConfig, out).port}"
    if not is_set(MediaEndpoint, "addr", out):
        out["MEDIA_ADDR"] = f"127.0.0.1:{load(GatewayConfig, out).port}"
    return out


class Stack:
    """auth + gateway + converter + Envoy, configured entirely by `env`.

    `log_dir`: each process appends to `<log_dir>/<name>.log` (tests);
    None: output is echoed to `echo` (default stdout) with a name prefix (make run).
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        log_dir: str | os.PathLike | None = None,
        echo: IO[str] | None = None,
        start_timeout: float = 60.0,
        require_consumer: bool = True,
        envoy_log_level: str = "warning",
    ):
        self.env = service_env(env)
        self.log_dir = Path(log_dir) if log_dir else None
        self.echo = echo
        self.start_timeout = start_timeout
        self.require_consumer = require_consumer
        self.envoy_log_level = envoy_log_level
        self.settings = load(MeshSettings, self.env)
        self.auth_port = self.settings.auth.port
        self.media_port = self.settings.gateway.port
        self.envoy_port = self.settings.envoy.port
        self.envoy_admin_port = self.settings.envoy.admin_port
        self.envoy_metrics_port = self.settings.envoy.metrics_port
        self.grace_seconds = self.settings.grace_seconds
        self.children: dict[str, Child] = {}
        self._envoy_config: Path | None = None

    # -- addresses ------------------------------------------------------------
    @property
    def auth_addr(self) -> str:
        return f"127.0.0.1:{self.auth_port}"

    @property
    def media_addr(self) -> str:
        return f"127.0.0.1:{self.media_port}"

    @property
    def envoy_addr(self) -> str:
        return f"127.0.0.1:{self.envoy_port}"

    @property
    def rest_base_url(self) -> str:
        return f"http://127.0.0.1:{self.envoy_port}"

    @property
    def envoy_admin_url(self) -> str:
        return f"http://127.0.0.1:{self.envoy_admin_port}"

    @property
    def metrics_urls(self) -> dict[str, str]:
        """Each process's Prometheus endpoint (those not switched off with port 0)."""
        ports = {"auth": self.settings.auth.metrics_port, "gateway": self.settings.gateway.metrics_port,
                 "converter": self.settings.converter.metrics_port}
        urls = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items() if port}
        if self.envoy_metrics_port:
            urls["envoy"] = f"http://127.0.0.1:{self.envoy_metrics_port}/stats/prometheus"
        return urls

    # -- processes ---------------------------------------------------------------
    @property
    def envoy_config_path(self) -> Path:
        if self._envoy_config is None:
            out = (self.log_dir / "envoy.yaml") if self.log_dir else Path(
                tempfile.gettempdir()) / f"video2mp3-envoy-{os.getpid()}-{self.envoy_port}.yaml"
            self._envoy_config = envoy_config.render(
                out,
                listen_port=self.envoy_port,
                admin_port=self.envoy_admin_port,
                metrics_port=self.envoy_metrics_port,
                access_log_format=load(LogSettings, self.env).format,
                auth=("127.0.0.1", self.auth_port),
                media=("127.0.0.1", self.media_port),
                descriptor=self.settings.envoy.descriptor,
                limits=self.settings.envoy.rate_limits(),
            )
        return self._envoy_config

    def _argv(self, name: str) -> list[str]:
        if name in PYTHON_SERVICES:
            return [sys.executable, "-m", f"video2mp3.{name}"]
        if name == "envoy":
            return [envoy_config.envoy_binary(self.settings.envoy.binary), "-c",
                    str(self.envoy_config_path),
                    *envoy_config.envoy_args(log_level=self.envoy_log_level,
                                             concurrency=self.settings.envoy.concurrency)]
        raise KeyError(f"unknown service {name!r}; expected one of {SERVICES}")

    def child(self, name: str) -> Child:
        """The Child for `name` (created on first use, not started)."""
        if name not in self.children:
            self.children[name] = Child(
                name, self._argv(name), env=self.env, cwd=ROOT,
                log_path=(self.log_dir / f"{name}.log") if self.log_dir else None,
                echo=self.echo,
            )
        return self.children[name]

    def start(self, names: Iterable[str] = SERVICES) -> Stack:
        """Start `names` (default: all four; the Python services in parallel,
        Envoy last) and wait until each is ready."""
        names = list(names)
        python = [n for n in names if n != "envoy"]
        for n in python:
            self.child(n).start()
        for n in python:
            self.wait_ready(n)
        if "envoy" in names:
            self.child("envoy").start()
            self.wait_ready("envoy")
        return self

    def start_service(self, name: str, *, wait: bool = True, env: Mapping[str, str] | None = None) -> Child:
        """(Re)start one service; if it is running, stop it first. `env`
        replaces its environment for this and later starts (e.g. MONGO_URI
        through a proxy); pass None to keep the current one."""
        c = self.child(name)
        if c.alive:
            c.stop(self.grace_seconds + 5)
        if env is not None:
            c.env = service_env(env)
        c.start()
        if wait:
            self.wait_ready(name)
        return c

    def restart(self, name: str, *, wait: bool = True) -> Child:
        """Stop `name` gracefully if running, start it again and wait for it."""
        return self.start_service(name, wait=wait)

    def wait_ready(self, name: str, timeout: float | None = None) -> bool:
        """Block until `name` is ready (see the module doc). Raises ChildDied if
        it exits meanwhile, TimeoutError after `timeout`; returns False only for
        a converter not yet consuming when require_consumer is off."""
        timeout = self.start_timeout if timeout is None else timeout
        c = self.child(name)
        if name == "auth":
            wait_for_grpc_health(self.auth_addr, timeout=timeout, child=c)
        elif name == "gateway":
            wait_for_grpc_health(self.media_addr, timeout=timeout, child=c)
        elif name == "converter":
            try:
                wait_for_queue_consumer(load(RabbitSettings, c.env), timeout=timeout, child=c)
            except TimeoutError:
                if self.require_consumer:
                    raise
                return False
        elif name == "envoy":
            wait_for_port("127.0.0.1", self.envoy_port, timeout=timeout, child=c)
        else:
            raise KeyError(name)
        return True

    def stop_service(self, name: str, deadline: float | None = None) -> int | None:
        """Graceful stop (SIGTERM, SIGKILL after the deadline). Returns the exit code."""
        return self.child(name).stop(self.grace_seconds + 5 if deadline is None else deadline)

    def kill(self, name: str) -> int | None:
        """SIGKILL `name` (and anything it started). Returns the exit code (-9)."""
        return self.child(name).kill()

    def converter_workers(self) -> list[int]:
        """PIDs of the converter's worker processes (its multiprocessing spawn
        children; the supervisor's other child, the resource tracker, is not one)."""
        import psutil

        out = []
        for pid in self.child("converter").descendants():
            try:
                if "spawn_main" in " ".join(psutil.Process(pid).cmdline()):
                    out.append(pid)
            except psutil.Error:
                continue
        return out

    def dead(self) -> list[Child]:
        """Children that were started and have exited without being asked to."""
        return [c for c in self.children.values()
                if c.proc is not None and not c.alive and not c.expected_exit]

    def ensure_running(self) -> list[str]:
        """Restart (and wait for) every started service that is not running. Returns their names."""
        restarted = []
        for name in SERVICES:
            c = self.children.get(name)
            if c is not None and c.proc is not None and not c.alive:
                self.start_service(name)
                restarted.append(name)
        return restarted

    def close(self) -> None:
        """Envoy first (no new requests), then the services together."""
        # Dead ones too: stop_all also kills what a crashed child left in its group.
        envoy = [c for n, c in self.children.items() if n == "envoy" and c.proc is not None]
        rest = [c for n, c in self.children.items() if n != "envoy" and c.proc is not None]
        stop_all(envoy, deadline=5)
        stop_all(rest, deadline=self.grace_seconds + 5)
        if self.log_dir is None and self._envoy_config is not None:
            self._envoy_config.unlink(missing_ok=True)  # the temp copy, not a test artefact
            self._envoy_config = None

    # -- logs ------------------------------------------------------------------------
    @property
    def logs(self) -> dict[str, Path]:
        return {n: c.log_path for n, c in self.children.items() if c.log_path is not None}

    def log_tail(self, name: str, max_lines: int = 60) -> str:
        c = self.children.get(name)
        return c.log_tail(max_lines) if c else ""

    def describe_logs(self, max_lines: int = 40) -> str:
        """Every process's state and last log lines, for a failed test's report."""
        parts = []
        for name, c in self.children.items():
            state = "running" if c.alive else f"exited with code {c.returncode}"
            parts.append(f"----- {name} (pid {c.pid}, {state}) {c.log_path or ''} -----")
            parts.append(c.log_tail(max_lines))
        return "\n".join(parts)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
