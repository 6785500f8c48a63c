"""`make run`'s supervision: a child that dies is logged in one line and
restarted with backoff, instead of taking the whole mesh down.

    sup = Supervisor(say)
    while True:
        sup.check(children)     # logs deaths, restarts what is due
        time.sleep(0.5)

Backoff doubles from 1 s to 30 s per child, and starts over once a child has
stayed up for STABLE_S. The services reconnect to a restarted store or auth on
their own, and the jobs machinery (leases, redelivery, outbox) resumes the
work a dead process held.
"""
from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from localmesh.processes import Child

FIRST_BACKOFF_S, MAX_BACKOFF_S, STABLE_S = 1.0, 30.0, 60.0


def _oom_counter_file() -> Path | None:
    """Where the kernel counts OOM kills in this process's memory cgroup
    (children share it): cgroup v2 memory.events, or v1 memory.oom_control."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            f = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.events"
        elif "memory" in controllers.split(","):
            f = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.oom_control"
        else:
            continue
        if f.exists():
            return f
    return None


def oom_kills() -> int | None:
    """The cgroup's oom_kill counter, or None where there is none."""
    f = _oom_counter_file()
    if f is None:
        return None
    try:
        for line in f.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def describe_exit(code: int | None, oom_before: int | None, oom_after: int | None) -> str:
    """'exited with code 1', 'killed by SIGKILL (the OOM killer: ...)', ..."""
    if code is None:
        return "stopped"
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    text = f"killed by {name} (exit {code})"
    if code == -signal.SIGKILL:
        if oom_before is not None and oom_after is not None and oom_after > oom_before:
            text += f" — the OOM killer: cgroup oom_kill count went {oom_before} -> {oom_after}"
        else:
            text += " — possibly the OOM killer (see dmesg)"
    return text


class Supervisor:
    def __init__(self, say: Callable[[str], None],
                 restart: Callable[[Child], None] | None = None, now: Callable[[], float] = time.monotonic):
        self.say = say
        self.restart = restart or (lambda c: c.start())
        self.now = now
        self._oom = oom_kills()
        self._backoff: dict[str, float] = {}
        self._due: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self.deaths: list[tuple[str, str]] = []

    def check(self, children: Iterable[Child]) -> None:
        t = self.now()
        for c in children:
            if c.proc is None or c.expected_exit:
                continue
            if c.alive:
                self._started.setdefault(c.name, t)
                if t - self._started[c.name] >= STABLE_S:
                    self._backoff.pop(c.name, None)
                continue
            if c.name not in self._due:  # a new death
                oom = oom_kills()
                what = describe_exit(c.returncode, self._oom, oom)
                self._oom = oom
                delay = self._backoff.get(c.name, FIRST_BACKOFF_S)
                self._backoff[c.name] = min(delay * 2, MAX_BACKOFF_S)
                self._due[c.name] = t + delay
                self.deaths.append((c.name, what))
                self.say(f"{c.name} (pid {c.pid}) {what}; restarting in {delay:.0f}s")
            elif t >= self._due[c.name]:
                del self._due[c.name]
                self._started[c.name] = t
                try:
                    self.restart(c)
                    self.say(f"{c.name} restarted (pid {c.pid})")
                except Exception as e:  # noqa: BLE001 - try again after the next backoff
                    self.say(f"{c.name} could not be restarted: {e}")
                    self._due[c.name] = t + self._backoff.get(c.name, FIRST_BACKOFF_S)
