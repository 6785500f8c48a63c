"""`make compose-up` and `make compose-down`: the stack of deploy/docker-compose.yaml,
with Docker Compose where a Docker daemon answers, else with podman-compose
(a dev dependency of this project) and podman.

    python deploy/compose.py up     # then waits until GET /health is 200 on 127.0.0.1:$COMPOSE_PORT (8080)
    python deploy/compose.py down   # containers, network and volumes; says if anything is left

Before `up`, what the stack needs and nobody commits is made when missing,
the documented way: deploy/.env from deploy/.env.example with a random value
for every empty password, and auth's signing key in deploy/keys (`python -m
video2mp3.auth keys new`, then owned by the services' uid 10001). The
dependencies (MySQL, RabbitMQ, MongoDB) are the official images where they
can be had, else local stand-ins (deploy/images.sh resolve), chosen through
MYSQL_IMAGE, RABBITMQ_IMAGE and MONGO_IMAGE.

podman-compose on podman < 4.6 ignores `depends_on: {condition:
service_healthy}`, and podman runs no health check by itself here (they need
systemd timers), so `up` starts the services one dependency level at a time
and runs each awaited health check itself (`podman healthcheck run`) until
it passes, as Docker Compose would.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yaml"
ENV_FILE = ROOT / "deploy" / ".env"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
KEYS = ROOT / "deploy" / "keys"
IMAGES = ROOT / "deploy" / "images.sh"
SERVICE_UID = 10001
# Service -> (variable choosing its image, stand-in kind for deploy/images.sh).
DEPENDENCIES = {"mysql": ("MYSQL_IMAGE", "mariadb"), "rabbitmq": ("RABBITMQ_IMAGE", "rabbitmq"),
                "mongo": ("MONGO_IMAGE", "secantusdb")}
APP_IMAGES = ("video2mp3:latest", "video2mp3-envoy:latest")
HEALTHY_TIMEOUT_S = 180
HEALTH_TIMEOUT_S = 180


def say(msg: str) -> None:
    print(f"compose: {msg}", file=sys.stderr, flush=True)


def fail(msg: str) -> NoReturn:
    say(msg)
    raise SystemExit(1)


def engine() -> str:
    chosen = os.environ.get("CONTAINER_ENGINE")
    if chosen:
        return chosen
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    if shutil.which("podman"):
        return "podman"
    fail("no container engine: install podman (or docker)")
    raise AssertionError


def compose_cmd(eng: str) -> list[str]:
    if eng == "docker":
        return ["docker", "compose", "-f", str(COMPOSE_FILE)]
    # podman-compose from this virtualenv (requirements/dev.txt), else PATH.
    here = Path(sys.executable).parent / "podman-compose"
    exe = str(here) if here.exists() else shutil.which("podman-compose")
    if not exe:
        fail("podman-compose is not installed (make install puts it in .venv)")
    cmd = [str(exe), "-f", str(COMPOSE_FILE)]
    backend = subprocess.run(["podman", "info", "--format", "{{.Host.NetworkBackend}}"],
                             capture_output=True, text=True).stdout.strip()
    if backend == "cni":  # no DNS on internal networks (deploy/compose.cni.yaml)
        say("podman's CNI network backend: the converter's network is not internal here (deploy/compose.cni.yaml)")
        cmd += ["-f", str(COMPOSE_FILE.parent / "compose.cni.yaml")]
    return cmd


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


# What podman says on every container with a health check when there is no
# systemd to time them (they are run by hand here: wait_healthy), and
# conmon's complaint that there is no syslog: noise, not errors.
NOISE = re.compile(r"unable to get systemd connection|failed to connect to syslog")


def run_quietly(cmd: list[str], env: dict[str, str] | None = None) -> None:
    """Run a compose command; its output only if it fails, less the noise."""
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        print("\n".join(line for line in r.stdout.splitlines() if not NOISE.search(line)), file=sys.stderr)
        fail(f"{' '.join(cmd[:1] + cmd[3:])} failed (exit {r.returncode})")


def project() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


# ------------------------------------------------------------------ what nobody commits

def ensure_env_file() -> None:
    """deploy/.env as the docs say to make it: the example, passwords filled in."""
    if ENV_FILE.exists():
        return
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, eq, value = line.partition("=")
        if eq and not line.startswith("#") and "PASSWORD" in key and not value:
            line = f"{key}={secrets.token_urlsafe(24)}"
        lines.append(line)
    ENV_FILE.write_text("\n".join(lines) + "\n")
    ENV_FILE.chmod(0o600)
    say(f"made {ENV_FILE.relative_to(ROOT)} (random passwords)")


def ensure_keys() -> None:
    """Auth's signing key, readable by the services' user in the image."""
    if not any(KEYS.glob("*.pem")):
        run([sys.executable, "-m", "video2mp3.auth", "keys", "new", "--dir", str(KEYS)], stdout=subprocess.DEVNULL)
        say(f"made a signing key in {KEYS.relative_to(ROOT)}")
    wrong = [p for p in [KEYS, *KEYS.iterdir()] if p.stat().st_uid != SERVICE_UID]
    if wrong:
        if os.geteuid() != 0:
            fail(f"{KEYS.relative_to(ROOT)} must belong to uid {SERVICE_UID} (the services' user): "
                 f"sudo chown -R {SERVICE_UID} {KEYS.relative_to(ROOT)}")
        for p in wrong:
            os.chown(p, SERVICE_UID, -1)


def dependency_images(env: dict[str, str]) -> None:
    """MYSQL_IMAGE, RABBITMQ_IMAGE, MONGO_IMAGE: as set, else the compose
    file's default where it can be had, else the local stand-in."""
    services = project()["services"]
    for service, (var, kind) in DEPENDENCIES.items():
        if env.get(var):
            continue
        m = re.fullmatch(r"\$\{" + var + r":-([^}]+)\}", services[service]["image"])
        if not m:
            fail(f"{service}'s image in {COMPOSE_FILE.name} is not ${{{var}:-...}}")
        out = run(["bash", str(IMAGES), "resolve", kind, m.group(1)], stdout=subprocess.PIPE, text=True, env=env)
        env[var] = out.stdout.strip()


# ------------------------------------------------------------------ podman

def levels(services: dict) -> list[list[str]]:
    """The services in start order: each level needs only the ones before it."""
    left = {name: set(svc.get("depends_on") or {}) for name, svc in services.items()}
    out: list[list[str]] = []
    while left:
        ready = sorted(n for n, deps in left.items() if not deps - {x for lvl in out for x in lvl})
        if not ready:
            fail(f"depends_on has a cycle among {sorted(left)}")
        out.append(ready)
        for n in ready:
            del left[n]
    return out


def awaited_healthy(services: dict) -> set[str]:
    return {dep for svc in services.values() for dep, cond in _depends(svc).items()
            if cond.get("condition") == "service_healthy"}


def _depends(svc: dict) -> dict:
    deps = svc.get("depends_on") or {}
    return {d: {} for d in deps} if isinstance(deps, list) else deps


def container_of(name: str, service: str) -> str:
    out = run(["podman", "ps", "-a", "--format", "{{.Names}}",
               "--filter", f"label=io.podman.compose.project={name}",
               "--filter", f"label=com.docker.compose.service={service}"], stdout=subprocess.PIPE, text=True)
    names = out.stdout.split()
    if not names:
        fail(f"no container for service {service}")
    return names[0]


def wait_healthy(container: str) -> None:
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    while True:
        check = subprocess.run(["podman", "healthcheck", "run", container], capture_output=True, text=True)
        if check.returncode == 0:
            return
        state = subprocess.run(["podman", "inspect", "-f", "{{.State.Status}}", container],
                               capture_output=True, text=True).stdout.strip()
        if state in ("exited", "stopped") or time.monotonic() > deadline:
            logs = subprocess.run(["podman", "logs", "--tail", "30", container], capture_output=True, text=True)
            fail(f"{container} did not become healthy ({state}; last check: "
                 f"{(check.stdout + check.stderr).strip() or check.returncode}); its last lines:\n"
                 f"{logs.stdout}{logs.stderr}")
        time.sleep(2)


def podman_up(cmd: list[str], env: dict[str, str]) -> None:
    doc = project()
    services = {n: s for n, s in doc["services"].items() if not s.get("profiles")}
    healthy = awaited_healthy(services)
    for level in levels(services):
        say(f"starting {', '.join(level)}")
        run_quietly([*cmd, "up", "-d", "--no-deps", "--no-build", *level], env=env)
        for service in level:
            if service in healthy:
                wait_healthy(container_of(doc["name"], service))
                say(f"{service} is healthy")


def leftovers(name: str) -> list[str]:
    label = f"label=io.podman.compose.project={name}"
    out = []
    for kind, args in (("container", ["ps", "-a"]), ("volume", ["volume", "ls"]), ("network", ["network", "ls"]),
                       ("pod", ["pod", "ps"])):
        r = subprocess.run(["podman", *args, "-q", "--filter", label], capture_output=True, text=True)
        out += [f"{kind} {x}" for x in r.stdout.split()]
    return out


# ------------------------------------------------------------------ up, down

def wait_for_health(port: int) -> None:
    url = f"http://127.0.0.1:{port}/health"
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:
            last = f"{e.code} {e.read()[:300]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(1)
    fail(f"{url} did not answer 200 in {HEALTH_TIMEOUT_S} s (last: {last})")


def up() -> None:
    started = time.monotonic()
    eng = engine()
    cmd = compose_cmd(eng)
    ensure_env_file()
    ensure_keys()
    env = dict(os.environ)
    dependency_images(env)
    for image in APP_IMAGES:
        if subprocess.run([eng, "image", "inspect", image], capture_output=True).returncode != 0:
            fail(f"no image {image}: run `make images` first")
    if eng == "docker":
        run([*cmd, "up", "-d", "--no-build", "--wait"], env=env)
    else:
        podman_up(cmd, env)
    port = int(env.get("COMPOSE_PORT") or 8080)
    wait_for_health(port)
    say(f"up in {time.monotonic() - started:.0f} s: http://127.0.0.1:{port}/ (GET /health answers 200)")


def down() -> None:
    eng = engine()
    cmd = compose_cmd(eng)
    # Volumes included; the .env is read for the file's ${...} to resolve.
    ensure_env_file()
    if eng == "docker":
        run([*cmd, "down", "-v", "--remove-orphans"])
        return
    name = project()["name"]
    run_quietly([*cmd, "down", "-v", "--remove-orphans"])
    left = leftovers(name)
    if left:
        fail(f"still there after down: {', '.join(left)}")
    say("down: no container, volume or network of the stack is left")


if __name__ == "__main__":
    actions = {"up": up, "down": down}
    if len(sys.argv) != 2 or sys.argv[1] not in actions:
        fail("usage: python deploy/compose.py up | down")
    actions[sys.argv[1]]()
