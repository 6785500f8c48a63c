"""What every command needs: where the server is, the saved token, the stubs,
and one mapping from gRPC failures to a message and an exit code."""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import ssl
import time
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from video2mp3.auth.v1 import auth_pb2_grpc
from video2mp3.media.v1 import media_pb2_grpc

DEFAULT_SERVER = "localhost:8000"  # Envoy's port: gRPC and REST on one listener
# Exit codes (listed in `video2mp3 --help`); 2 is click's own for bad usage.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4
EXIT_CONVERSIONS_FAILED = 5
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl-C

# Far below the 4 MiB gRPC message limit, large enough to keep the stream busy.
UPLOAD_CHUNK = 1024 * 1024


class CliError(Exception):
    """Ends the command: `message` on stderr, then `code`."""

    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code


def not_logged_in(why: str) -> CliError:
    return CliError(f"{why}; run `video2mp3 login`", EXIT_AUTH)


# ------------------------------------------------------------------ the server

@dataclasses.dataclass(frozen=True)
class Server:
    target: str  # host:port for grpc
    tls: bool
    ca_file: Path | None = None

    @classmethod
    def parse(cls, text: str, tls: bool = False, ca_file: Path | None = None) -> Server:
        """`host:port`, `http://host[:port]` (plaintext) or `https://host[:port]`
        (TLS, port 443 by default). --tls or --ca also mean TLS."""
        text = text.strip().rstrip("/")
        scheme, sep, rest = text.partition("://")
        if not sep:
            scheme, rest = "", text
        if scheme not in ("", "http", "https") or not rest or "/" in rest:
            raise CliError(f"--server {text!r}: expected HOST:PORT, http://HOST[:PORT] or https://HOST[:PORT]",
                           EXIT_USAGE)
        tls = tls or ca_file is not None or scheme == "https"
        if not _has_port(rest):
            rest += ":443" if tls else (":80" if scheme == "http" else ":8000")
        return cls(rest, tls, ca_file)

    def channel(self) -> grpc.Channel:
        options = [("grpc.max_receive_message_length", 8 * 1024 * 1024)]
        if not self.tls:
            return grpc.insecure_channel(self.target, options=options)
        roots = self.ca_file.read_bytes() if self.ca_file is not None else _system_roots()
        return grpc.secure_channel(self.target, grpc.ssl_channel_credentials(roots), options=options)


def _has_port(hostport: str) -> bool:
    host, sep, port = hostport.rpartition(":")
    return bool(sep and port.isdigit() and host and not host.endswith(":"))  # not a bare IPv6


def _system_roots() -> bytes | None:
    """The operating system's CA bundle (SSL_CERT_FILE honoured), which gRPC
    does not read by itself; None lets gRPC use its bundled roots."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return Path(candidate).read_bytes()
    return None


# ------------------------------------------------------------------ the token

def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "video2mp3"


def token_path() -> Path:
    return config_dir() / "token"


def save_token(token: str) -> Path:
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created 0600, and made 0600 if it existed with looser bits.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(token + "\n")
    return path


def forget_token() -> bool:
    try:
        token_path().unlink()
        return True
    except FileNotFoundError:
        return False


def token_claims(token: str) -> dict:
    """The JWT's claims, unverified (only the server can verify them)."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


def load_token() -> str:
    """The saved token; CliError(EXIT_AUTH) if there is none or it has expired."""
    try:
        token = token_path().read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if not token:
        raise not_logged_in("not logged in")
    exp = token_claims(token).get("exp")
    if isinstance(exp, (int, float)) and exp <= time.time():
        raise not_logged_in("your login has expired")
    return token


# ------------------------------------------------------------------ the stubs

class Session:
    def __init__(self, server: Server):
        self.server = server
        self.channel = server.channel()
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.media = media_pb2_grpc.MediaServiceStub(self.channel)
        self._token: str | None = None

    @property
    def metadata(self) -> list[tuple[str, str]]:
        if self._token is None:
            self._token = load_token()
        return [("authorization", f"Bearer {self._token}")]

    def close(self) -> None:
        self.channel.close()


# ------------------------------------------------------------------ failures

def _detail(err: grpc.RpcError, kind):
    """The first detail of type `kind` in our servers' rich status; None for a transport error."""
    status = rpc_status.from_call(err) if isinstance(err, grpc.Call) else None
    for detail in status.details if status else ():
        info = kind()
        if detail.Unpack(info):
            return info
    return None


def error_reason(err: grpc.RpcError) -> str | None:
    """ErrorInfo.reason of our servers' rich status; None for a transport error."""
    info = _detail(err, error_details_pb2.ErrorInfo)
    return info.reason if info is not None else None


def retry_delay(err: grpc.RpcError) -> float | None:
    info = _detail(err, error_details_pb2.RetryInfo)
    return info.retry_delay.ToTimedelta().total_seconds() if info is not None else None


def describe(err: grpc.RpcError, server: Server) -> CliError:
    """What to tell the user about a failed RPC, and the exit code."""
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (err.details() if isinstance(err, grpc.Call) else "") or str(code)
    reason = error_reason(err)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        if reason == "BAD_CREDENTIALS":
            return CliError(f"{details}; try again", EXIT_AUTH)
        return not_logged_in(f"the server did not accept your login ({details})")
    if reason is None and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        where = ("https://" if server.tls else "") + server.target
        return CliError(f"cannot reach the video2mp3 server at {where} ({details}). Is it running? "
                        "Pick another with --server HOST:PORT or VIDEO2MP3_SERVER.", EXIT_UNREACHABLE)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return CliError(f"not supported by this server ({details})")
    return CliError(details)
