"""Helpers of the container tests: the documented commands, the engine, a stack."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
# How long one documented command may take: `make images` from nothing
# (the Debian base, the stand-ins, pip) is the longest, ~5 minutes here.
COMMAND_TIMEOUT_S = 1200
# Command -> seconds it took, for the run's summary (conftest.py).
TIMINGS: dict[str, float] = {}


def documented(name: str) -> list[str]:
    """The commands of the ```sh block after `<!-- tested: NAME ... -->` in
    docs/operations.md, one per line, without their comments."""
    text = OPERATIONS.read_text()
    m = re.search(rf"<!-- tested: {re.escape(name)}\b[^>]*-->\s*```sh\n(.*?)```", text, re.S)
    assert m, f"docs/operations.md has no block marked <!-- tested: {name} -->"
    commands = []
    for line in m.group(1).splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            commands.append(line)
    assert commands, name
    return commands


def run_documented(command: str, env: dict[str, str]) -> None:
    """One documented command, as a user would type it at the repository root."""
    started = time.monotonic()
    r = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=COMMAND_TIMEOUT_S)
    TIMINGS[command] = time.monotonic() - started
    if r.returncode != 0:
        pytest.fail(f"`{command}` failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}",
                    pytrace=False)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def engine() -> str:
    """As deploy/images.sh picks it."""
    if os.environ.get("CONTAINER_ENGINE"):
        return os.environ["CONTAINER_ENGINE"]
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    return "podman"


def container_cmd(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run([engine(), *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        pytest.fail(f"{engine()} {shlex.join(args)}: {r.stderr.strip()}", pytrace=False)
    return r


@dataclass
class Stack:
    """A running stack: where its Envoy answers, and its containers."""
    base_url: str
    grpc_addr: str
    containers: dict[str, str] = field(default_factory=dict)  # service -> container name
