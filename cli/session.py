"""What every command needs: where the server is, the saved login (renewed
silently) or an API key, the stubs, and one mapping from gRPC failures to a
message and an exit code."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import ssl
import threading
import time
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.media.v1 import media_pb2_grpc

try:  # one renewal at a time across processes sharing the config dir (not on Windows)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

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
        # The user agent names the CLI in the server's list of sessions.
        options = [
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            ("grpc.primary_user_agent", f"video2mp3-cli/{_version()}"),
        ]
        if not self.tls:
            return grpc.insecure_channel(self.target, options=options)
        roots = self.ca_file.read_bytes() if self.ca_file is not None else _system_roots()
        return grpc.secure_channel(self.target, grpc.ssl_channel_credentials(roots), options=options)


def _version() -> str:
    try:
        return importlib.metadata.version("video2mp3")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


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


# ------------------------------------------------------------------ the login

# The login is two files in the config dir, each 0600: `token`, the access
# token (short-lived, sent with every call), and `refresh_token`, which renews
# it (RefreshSession) shortly before it expires: the login lasts as long as
# the server's session does. Renewal rotates the refresh token, so processes
# sharing the files take turns (a lock file): the second one finds the token
# the first one got, instead of spending a refresh token twice (which the
# server would take for theft and end the session).


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "video2mp3"


def token_path() -> Path:
    return config_dir() / "token"


def refresh_token_path() -> Path:
    return config_dir() / "refresh_token"


def _write_private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created 0600, and made 0600 if it existed with looser bits.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text + "\n")
    return path


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""


def save_token(token: str, refresh_token: str = "") -> Path:
    """Save a login: the access token and (when the server gave one) the refresh token."""
    if refresh_token:  # first: a crash in between leaves a pair that still renews
        _write_private(refresh_token_path(), refresh_token)
    else:
        forget(refresh_token_path())
    return _write_private(token_path(), token)


def forget(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def forget_token() -> bool:
    """Forget the saved login (both files). True if there was one."""
    had_refresh = forget(refresh_token_path())
    return forget(token_path()) or had_refresh


def saved_refresh_token() -> str:
    return _read(refresh_token_path())


def token_claims(token: str) -> dict:
    """The JWT's claims, unverified (only the server can verify them)."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


def needs_renewal(token: str, now: float | None = None) -> bool:
    """Expired, or about to: within a quarter of its lifetime of its end, and a minute at most."""
    claims = token_claims(token)
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, (int, float)):
        return False  # not ours to judge: the server will say
    lifetime = exp - iat if isinstance(iat, (int, float)) and exp > iat else 0
    return exp - min(60.0, lifetime / 4) <= (time.time() if now is None else now)


def load_token() -> str:
    """The saved access token; CliError(EXIT_AUTH) if there is none or it has expired."""
    token = _read(token_path())
    if not token:
        raise not_logged_in("not logged in")
    exp = token_claims(token).get("exp")
    if isinstance(exp, (int, float)) and exp <= time.time():
        raise not_logged_in("your login has expired")
    return token


@contextlib.contextmanager
def _renewal_lock():
    if fcntl is None:
        yield
        return
    config_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(config_dir() / ".renew.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# ------------------------------------------------------------------ the stubs

class Session:
    """The stubs, and the credential every call carries: an API key if one is
    given, else the saved login, renewed as it nears its end."""

    def __init__(self, server: Server, api_key: str | None = None):
        self.server = server
        self.channel = server.channel()
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.media = media_pb2_grpc.MediaServiceStub(self.channel)
        self.api_key = (api_key or "").strip() or None
        self._token: str | None = None
        self._lock = threading.Lock()  # convert's threads renew once between them

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.credential()}")]

    def credential(self) -> str:
        """The API key, or an access token that is not about to expire; CliError(EXIT_AUTH) when
        there is no login or it cannot be renewed."""
        if self.api_key:
            return self.api_key
        with self._lock:
            if self._token is None or needs_renewal(self._token):
                self._token = self._current_token()
            return self._token

    def _current_token(self) -> str:
        token = _read(token_path())
        if token and not needs_renewal(token):
            return token
        if not saved_refresh_token():
            return load_token()  # not logged in, or expired with nothing to renew it
        with _renewal_lock():
            token = _read(token_path())  # another process may have renewed it meanwhile
            if token and not needs_renewal(token):
                return token
            return self._renew(saved_refresh_token())

    def _renew(self, refresh_token: str) -> str:
        try:
            answer = self.auth.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=refresh_token), timeout=30)
        except grpc.RpcError as e:
            if isinstance(e, grpc.Call) and e.code() in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.INVALID_ARGUMENT,
            ):
                forget_token()
                raise not_logged_in(f"your login has ended ({e.details()})") from None
            raise
        save_token(answer.access_token, answer.refresh_token)
        return answer.access_token

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
        if reason == "API_KEY_INVALID":  # logging in would not help: the key is the problem
            return CliError(f"the server did not accept the API key ({details})", EXIT_AUTH)
        return not_logged_in(f"the server did not accept your login ({details})")
    if reason is None and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        where = ("https://" if server.tls else "") + server.target
        return CliError(f"cannot reach the video2mp3 server at {where} ({details}). Is it running? "
                        "Pick another with --server HOST:PORT or VIDEO2MP3_SERVER.", EXIT_UNREACHABLE)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return CliError(f"not supported by this server ({details})")
    return CliError(details)
