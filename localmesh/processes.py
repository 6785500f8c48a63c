"""Start, watch and stop the mesh's child processes.

Used by `python -m localmesh` (`make run`) and by the test fixtures in
tests/conftest.py, so both run the services exactly the same way.

    child = Child("auth", [sys.executable, "-m", "video2mp3.auth"], env=env, log_path=tmp / "auth.log")
    child.start()
    wait_for_grpc_health(f"127.0.0.1:{port}", child=child)
    ...
    child.stop()          # SIGTERM, then SIGKILL after the deadline

Each child runs in its own session (process group), so a Ctrl-C in the
terminal reaches only the supervisor, which then stops the children in order
with SIGTERM. On Linux a child also gets SIGTERM if the thread that started it
dies (PR_SET_PDEATHSIG), so a crashed supervisor or test run leaves no
orphans; start children from a long-lived thread (the main thread).
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

from video2mp3.core.process import die_with_parent
from video2mp3.core.settings import RabbitSettings

T = TypeVar("T")

# Child.start uses a preexec_fn, so subprocess must fork (not vfork) and fork
# handlers run in the child.
# gRPC's C core has such handlers, on by default; in a process that talks gRPC
# (the test run; `make run` while it waits for health checks) they made about
# one child start in 1500 abort before exec ("Epoll1Poller ... epoll_wait
# error: Bad file descriptor", exit -6), and none in 14000 with them off. No
# child of ours uses gRPC before exec, so they are switched off, before gRPC
# initialises (hence at import; children inherit the setting, harmlessly).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

__all__ = [
    "Child",
    "ChildDied",
    "free_port",
    "port_is_open",
    "secantusd_argv",
    "secantusd_env",
    "stop_all",
    "wait_for",
    "wait_for_grpc_health",
    "wait_for_mongo",
    "wait_for_port",
    "wait_for_queue_consumer",
]


class ChildDied(RuntimeError):
    """A child exited while we were waiting for it to come up."""


# --------------------------------------------------------------------- ports

# Ports are handed out from below Linux's ephemeral range (32768-60999). A port
# the kernel picks (bind to 0) is an ephemeral one, and between our picking it
# and the child binding it, any outgoing connection (to MySQL, RabbitMQ, Mongo)
# may take it as its source port: CI once lost a module of tests to Envoy's
# "cannot bind ... Address already in use" that way. Below the range only an
# explicit bind takes a port, and this process never hands out one twice.
_PORTS = range(20000, 32768)
_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, outside the ephemeral range,
    not handed out before by this process."""
    rng = random.Random()
    with _ports_lock:
        for _ in range(1000):
            port = rng.choice(_PORTS)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free TCP port in {_PORTS.start}-{_PORTS.stop - 1}")


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------- children

class Child:
    """One supervised process.

    Output (stdout and stderr together) goes either to `log_path` (a file,
    appended to across restarts; what the tests use) or, when `log_path` is
    None, line by line to `echo` (default: this process's stdout) with a
    `name | ` prefix (what `make run` uses).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        log_path: str | os.PathLike | None = None,
        echo: IO[str] | None = None,
        prefix_width: int = 10,
    ):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.log_path = Path(log_path) if log_path else None
        self.echo = echo
        self.prefix = f"{name:<{prefix_width}}| "
        self.proc: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None
        self._expected_exit = False
        self._reaped_at: float | None = None

    # -- lifecycle --------------------------------------------------------
    def start(self) -> Child:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._kill_leftovers()  # of a previous run that crashed
        self._expected_exit = False
        self._reaped_at = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log:
                log.write(f"==== {time.strftime('%H:%M:%S')} starting {self.name}: "
                          f"{' '.join(self.argv)}\n".encode())
                log.flush()
                self.proc = self._popen(log)
        else:
            self.proc = self._popen(subprocess.PIPE)
            self._pump = threading.Thread(
                target=self._pump_output, name=f"log-{self.name}", daemon=True
            )
            self._pump.start()
        return self

    def _popen(self, stdout: IO[bytes] | int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv,
            stdout=stdout,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )

    def _pump_output(self) -> None:
        out = self.echo or sys.stdout
        assert self.proc
        assert self.proc.stdout
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with contextlib.suppress(Exception):
                out.write(self.prefix + line + "\n")
                out.flush()
        self.proc.stdout.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        if self.proc is None:
            return False
        if self.proc.poll() is None:
            return True
        if self._reaped_at is None:
            self._reaped_at = time.time()
        return False

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    @property
    def expected_exit(self) -> bool:
        """True once stop()/kill() was asked for: the exit is not a crash."""
        return self._expected_exit

    def descendants(self) -> list[int]:
        """PIDs of the processes it started (e.g. the converter's workers), for
        fault tests that kill one of them rather than the whole service."""
        proc = self.proc
        if proc is None or not self.alive:
            return []
        import psutil

        try:
            return [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM) without waiting."""
        self._expected_exit = True
        self.signal(signal.SIGTERM)

    def _kill_group(self) -> None:
        """SIGKILL the child and everything it started (its own process group)."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            # Not reaped yet, so its pid (= the group id) cannot have been reused.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.signal(signal.SIGKILL)
        else:
            self._kill_leftovers()

    def _kill_leftovers(self) -> list[int]:
        """After the leader has exited: SIGKILL what is left of its process group
        (e.g. workers of a crashed supervisor, which would otherwise keep
        consuming). Only processes created before the leader was reaped, so a
        later, unrelated process that happens to reuse the number is spared."""
        if self.proc is None or self.proc.returncode is None:
            return []
        import psutil

        pgid, cutoff = self.proc.pid, (self._reaped_at or time.time()) + 0.05
        killed = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == pgid and p.create_time() <= cutoff and p.pid != os.getpid():
                    p.kill()
                    killed.append(p.pid)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        if killed:
            self._note(f"killed {len(killed)} leftover process(es) of its group: {killed}")
            psutil.wait_procs([psutil.Process(pid) for pid in killed if psutil.pid_exists(pid)],
                              timeout=5)
        return killed

    def kill(self) -> int | None:
        """SIGKILL at once, with any processes it started (a crash, for fault
        tests), and reap it."""
        self._expected_exit = True
        if self.proc is None:
            return None
        self._kill_group()
        return self.wait(10)

    def wait(self, timeout: float | None = None) -> int | None:
        """Exit code, or None if still running after `timeout` seconds."""
        if self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._reaped_at is None:
            self._reaped_at = time.time()
        if self._pump is not None:
            self._pump.join(2)
        return code

    def stop(self, deadline: float = 15.0) -> int | None:
        """SIGTERM, wait up to `deadline` seconds, then SIGKILL; then SIGKILL
        anything it left behind in its process group. Returns the exit code."""
        if self.proc is None:
            return None
        if self.alive:
            self.terminate()
            if self.wait(deadline) is None:
                self._note(f"did not stop within {deadline:.0f}s of SIGTERM; sending SIGKILL")
                self._kill_group()
        self._expected_exit = True
        code = self.wait(10)
        self._kill_leftovers()
        return code

    def restart(self, deadline: float = 15.0) -> Child:
        self.stop(deadline)
        return self.start()

    # -- logs ---------------------------------------------------------------
    def _note(self, text: str) -> None:
        line = f"{self.prefix}[mesh] {text}\n"
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(line)
        else:
            (self.echo or sys.stdout).write(line)

    def log_tail(self, max_lines: int = 60) -> str:
        """The last lines of the log file ('' when output is echoed instead)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            with contextlib.suppress(OSError):
                f.seek(-64 * 1024, os.SEEK_END)
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-max_lines:])

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.returncode}"
        return f"<Child {self.name} pid={self.pid} {state}>"


def stop_all(children: Sequence[Child], deadline: float = 15.0) -> None:
    """SIGTERM every child at once, give them all `deadline` seconds together,
    then SIGKILL whatever is left."""
    for c in children:
        c.terminate()
    end = time.monotonic() + deadline
    for c in children:
        if c.wait(max(0.0, end - time.monotonic())) is None:
            c._note(f"did not stop within {deadline:.0f}s of SIGTERM; sending SIGKILL")
            c.kill()
        c.stop(0)  # reaps, and kills anything left in its process group


# ------------------------------------------------------------------- waiting

def wait_for(
    what: str,
    check: Callable[[], T | Literal[False] | None],
    timeout: float = 30.0,
    interval: float = 0.1,
    *,
    child: Child | None = None,
    retry_errors: bool = True,
) -> T:
    """The one polling loop (launcher, tests, benchmarks): call `check()` until
    it returns something truthy and return that. Raise ChildDied at once if
    `child` exits meanwhile, TimeoutError naming `what` after `timeout`
    seconds. An exception from `check()` means "not yet" unless
    `retry_errors` is False, when it propagates at once."""
    end = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if child is not None and child.proc is not None and not child.alive:
            tail = child.log_tail(30)
            raise ChildDied(
                f"{child.name} exited with code {child.returncode} while waiting for {what}"
                + (f"\n--- last lines of {child.log_path} ---\n{tail}" if tail else "")
            )
        try:
            value = check()
            if value:
                return value
            last_error = None
        except Exception as e:  # any failure means "not yet"
            if not retry_errors:
                raise
            last_error = e
        if time.monotonic() >= end:
            why = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s{why}")
        time.sleep(interval)


def wait_for_port(host: str, port: int, *, timeout: float = 30.0, child: Child | None = None) -> None:
    """Until something accepts TCP connections on host:port."""
    wait_for(f"{host}:{port} to accept connections", lambda: port_is_open(host, port),
             timeout=timeout, child=child)


def wait_for_grpc_health(
    address: str,
    service: str = "",
    *,
    timeout: float = 30.0,
    child: Child | None = None,
) -> None:
    """Until grpc.health.v1 Check(service) on `address` answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(address)
    try:
        stub = health_pb2_grpc.HealthStub(channel)

        def check() -> bool:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        wait_for(f"gRPC health of {service or 'server'} at {address}", check,
                 timeout=timeout, interval=0.2, child=child)
    finally:
        channel.close()


# The embedded SecantusDB, configured for GridFS (docs/operations.md "Big files").
# Standalone, as docker-compose's mongod runs: nothing here uses change
# streams or transactions (WatchJob polls, gateway/watch.py), and as a
# replica set SecantusDB wrote every document a second time into its oplog,
# each 255 KiB chunk included. That doubled what an upload wrote and the
# store's CPU per byte, and the oplog's file, capped by entries, still grew
# to 14 GB over a day of uploads (make bench-day): its space was not reused.
SECANTUS_STANDALONE = "--standalone"
# WiredTiger cache: the store's memory, beyond ~100 MB of Python. GridFS data
# is streamed once, so a big cache buys nothing.
SECANTUS_CACHE_SIZE = "256M"
# WiredTiger deletes journal files only after a checkpoint (SecantusDB: every
# 60 s): ~2x the bytes written meanwhile, ~4 GB at upload speed. 10 s keeps it
# under ~1 GB. A checkpoint is also when the pages of deleted chunks become
# free for later writes to reuse.
SECANTUS_CHECKPOINT_SECONDS = "10"
# SecantusDB serves each connection on its own thread, and glibc gives each
# thread that allocates its own heap (up to 8 per core); chunk-sized buffers
# freed on another thread than made them keep those heaps' free space
# resident. The services get the same bound (localmesh/stack.py).
SECANTUS_MALLOC_ARENA_MAX = "2"


# How often the embedded store compacts its files (localmesh/secantusd.py):
# WiredTiger reuses the space of deleted videos but never shrinks a file on
# its own. MONGO_COMPACT_S (localmesh/settings.py) sets it for make run.
SECANTUS_COMPACT_SECONDS = 60.0
SECANTUSD = Path(__file__).resolve().parent / "secantusd.py"


def secantusd_argv(port: int, storage_path: str | os.PathLike, *, cache_size: str | None = None,
                   host: str = "127.0.0.1", log_level: str = "WARNING",
                   compact_every_s: float = SECANTUS_COMPACT_SECONDS) -> list[str]:
    """The command line of an embedded SecantusDB (the MongoDB-compatible
    server `make run` and the tests use): secantusd-py with its files
    compacted every `compact_every_s` (0: never), by this Python."""
    return [sys.executable, str(SECANTUSD), "--compact-every", f"{compact_every_s:g}",
            "--host", host, "--port", str(port),
            "--storage-path", str(storage_path), "--log-level", log_level,
            "--cache-size", cache_size or SECANTUS_CACHE_SIZE, SECANTUS_STANDALONE]


def secantusd_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: ours) plus the settings SecantusDB reads from the environment."""
    out = dict(os.environ if env is None else env)
    out.setdefault("SECANTUS_CHECKPOINT_SECONDS", SECANTUS_CHECKPOINT_SECONDS)
    out.setdefault("MALLOC_ARENA_MAX", SECANTUS_MALLOC_ARENA_MAX)
    return out


def wait_for_mongo(uri: str, *, timeout: float = 30.0, child: Child | None = None) -> None:
    """Until a MongoDB (or SecantusDB) at `uri` answers ping."""
    import pymongo

    def check() -> bool:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000
        )
        try:
            return client.admin.command("ping").get("ok") == 1
        finally:
            client.close()

    wait_for(f"MongoDB at {uri}", check, timeout=timeout, interval=0.2, child=child)


def wait_for_queue_consumer(
    rabbit: RabbitSettings,
    *,
    minimum: int = 1,
    timeout: float = 30.0,
    child: Child | None = None,
) -> None:
    """Until RabbitMQ reports at least `minimum` consumers on `rabbit.queue`:
    how we know the converter (which has no port) is ready."""
    import pika

    from video2mp3.domain.queue import connection_parameters

    queue = rabbit.queue
    params = connection_parameters(rabbit)
    conn = None

    def check() -> bool:
        nonlocal conn
        if conn is None or conn.is_closed:
            conn = pika.BlockingConnection(params)
        ch = conn.channel()
        try:
            # passive: never creates the queue (a missing one closes the channel).
            ok = ch.queue_declare(queue, passive=True)
            return ok.method.consumer_count >= minimum
        finally:
            if ch.is_open:
                ch.close()

    try:
        wait_for(f"a consumer on RabbitMQ queue {queue!r}", check,
                 timeout=timeout, interval=0.25, child=child)
    finally:
        if conn is not None and conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()
