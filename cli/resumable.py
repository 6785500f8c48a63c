"""Resumable uploads for `video2mp3 convert`: tus 1.0 over HTTP(S), on the same
port as gRPC (Envoy transcodes /v1/uploads; docs/webhooks-and-uploads.md).

Files of at least --resumable-over MB (default 64) go this way. The upload is
created once (POST with Upload-Length and Upload-Metadata: the file name, the
conversion options and a request_id), then sent in PATCHes of PATCH_BYTES
from wherever the server says it has got to. A dropped connection, a gateway
restart, 409/423/429 or a 5xx is retried with backoff after asking the server
(HEAD) for the offset; nothing already stored is sent again. The upload's
URL is kept in $XDG_CONFIG_HOME/video2mp3/uploads.json under the file's path,
size and modification time and the options, so running the same command
again after the process died resumes too; it is forgotten once complete.
Ctrl-C terminates the upload (DELETE): nothing stays on the server.

Only the standard library's http.client: the CLI's dependencies stay as they are.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from video2mp3.cli.session import Server, config_dir

TUS_VERSION = "1.0.0"
PATCH_BYTES = 64 * 1024 * 1024
READ_BYTES = 1024 * 1024
RETRY_DELAYS = (1, 2, 4, 8, 15, 30, 30, 30, 60, 60)
RETRY_STATUSES = {409, 423, 429, 500, 502, 503, 504}
TIMEOUT_S = 60.0


class UploadError(Exception):
    """The server refused the upload (`status` and its google.rpc.Status body)."""

    def __init__(self, status: int, body: bytes):
        try:
            info = json.loads(body or b"{}")
        except ValueError:
            info = {}
        message = info.get("message") if isinstance(info, dict) else None
        super().__init__(message or f"HTTP {status}")
        self.status = status
        self.reason = next((d.get("reason", "") for d in (info.get("details") or [])
                            if isinstance(d, dict) and "reason" in d), "") if isinstance(info, dict) else ""


class Cancelled(Exception):
    pass


def state_path() -> Path:
    return config_dir() / "uploads.json"


class Store:
    """Upload URLs by file (path, size, mtime, options), in a small JSON file (0600)."""

    _lock = threading.Lock()

    def __init__(self, path: Path | None = None):
        self.path = path or state_path()

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)

    def get(self, key: str) -> dict | None:
        with self._lock:
            return self._read().get(key)

    def put(self, key: str, value: dict) -> None:
        with self._lock:
            data = self._read()
            data[key] = value
            self._write(data)

    def forget(self, key: str) -> None:
        with self._lock:
            data = self._read()
            if data.pop(key, None) is not None:
                self._write(data)


def file_key(server: Server, path: Path, options: dict) -> str:
    st = path.stat()
    raw = json.dumps([server.target, str(path.resolve()), st.st_size, st.st_mtime_ns, sorted(options.items())])
    return hashlib.sha256(raw.encode()).hexdigest()


def encode_metadata(meta: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(str(v).encode()).decode()}" for k, v in meta.items())


class _Slice:
    """`n` bytes of an open file from its position, read in READ_BYTES, for
    http.client's body; reports progress and stops on cancel."""

    def __init__(self, f, n: int, on_bytes: Callable[[int], None], cancelled: threading.Event):
        self.f, self.left, self.on_bytes, self.cancelled = f, n, on_bytes, cancelled

    def read(self, size: int = -1) -> bytes:
        if self.cancelled.is_set():
            raise Cancelled()
        want = self.left if size is None or size < 0 else min(size, self.left, READ_BYTES)
        data = self.f.read(want)
        self.left -= len(data)
        if data:
            self.on_bytes(len(data))
        return data


class TusUpload:
    """One file's resumable upload: run() returns the job id."""

    def __init__(self, server: Server, authorization: Callable[[], str], path: Path, options: dict,
                 on_bytes: Callable[[int], None] = lambda n: None,
                 on_offset: Callable[[int], None] = lambda n: None,
                 cancelled: threading.Event | None = None, store: Store | None = None,
                 patch_bytes: int = PATCH_BYTES, sleep: Callable[[float], None] | None = None):
        self.server, self.authorization, self.path, self.options = server, authorization, path, options
        self.on_bytes, self.on_offset = on_bytes, on_offset
        self.cancelled = cancelled or threading.Event()
        self.store = store or Store()
        self.patch_bytes = patch_bytes
        self.sleep = sleep or (lambda s: self.cancelled.wait(s))
        self.size = path.stat().st_size
        self.key = file_key(server, path, options)
        self.url = ""
        self.retries = 0  # retried requests, for the curious (tests)

    # -- HTTP

    def _connection(self) -> http.client.HTTPConnection:
        host, _, port = self.server.target.rpartition(":")
        if not self.server.tls:
            return http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
        ctx = ssl.create_default_context(cafile=str(self.server.ca_file) if self.server.ca_file else None)
        return http.client.HTTPSConnection(host, int(port), timeout=TIMEOUT_S, context=ctx)

    def _request(self, method: str, path: str, headers: dict, body=None) -> tuple[int, dict, bytes]:
        conn = self._connection()
        try:
            conn.request(method, path, body=body, headers={
                "Tus-Resumable": TUS_VERSION, "Authorization": self.authorization(), **headers})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    # -- the protocol

    def run(self) -> str:
        """Upload (or resume) the file; the job id once the last byte is in."""
        saved = self.store.get(self.key)
        offset = None
        if saved:
            self.url = saved["url"]
            offset = self._with_retries(self._head, allow_gone=True)
        if offset is None:
            self.url = self._with_retries(self._create)
            self.store.put(self.key, {"url": self.url, "file": str(self.path), "time": time.time()})
            offset = 0
        self.on_offset(offset)
        while offset < self.size:
            offset = self._with_retries(lambda o=offset: self._patch(o))
        self.store.forget(self.key)
        return urlsplit(self.url).path.rstrip("/").rsplit("/", 1)[-1]

    def terminate(self) -> None:
        """Ctrl-C: delete the upload on the server and forget it (best effort)."""
        self.store.forget(self.key)
        if self.url:
            with contextlib.suppress(OSError, http.client.HTTPException):
                self._request("DELETE", urlsplit(self.url).path, {})

    def _with_retries(self, step: Callable, allow_gone: bool = False):
        for attempt in range(len(RETRY_DELAYS) + 1):
            if self.cancelled.is_set():
                raise Cancelled()
            try:
                return step()
            except UploadError as e:
                if allow_gone and e.status in (404, 410):
                    return None  # the saved upload expired or is gone: start afresh
                if e.status not in RETRY_STATUSES or attempt == len(RETRY_DELAYS):
                    raise
            except (OSError, http.client.HTTPException):
                if attempt == len(RETRY_DELAYS):
                    raise
            self.retries += 1
            self.sleep(RETRY_DELAYS[attempt])
        raise AssertionError("unreachable")

    def _create(self) -> str:
        meta = {"filename": self.path.name, "request_id": str(uuid.uuid4()),
                **{k: str(v) for k, v in self.options.items()}}
        status, headers, body = self._request("POST", "/v1/uploads", {
            "Upload-Length": str(self.size), "Upload-Metadata": encode_metadata(meta), "Content-Length": "0"})
        if status != 201 or "location" not in headers:
            raise UploadError(status, body)
        return headers["location"]

    def _head(self) -> int:
        status, headers, body = self._request("HEAD", urlsplit(self.url).path, {})
        if status != 200:
            raise UploadError(status, body)
        return int(headers["upload-offset"])

    def _patch(self, offset: int) -> int:
        """One PATCH from `offset`; on any failure the next try asks HEAD first."""
        if offset is None or self.retries:
            offset = self._head()
            self.on_offset(offset)
            if offset >= self.size:
                return offset
        n = min(self.patch_bytes, self.size - offset)
        with open(self.path, "rb") as f:
            f.seek(offset)
            status, headers, body = self._request(
                "PATCH", urlsplit(self.url).path,
                {"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
                 "Content-Length": str(n)}, _Slice(f, n, self.on_bytes, self.cancelled))
        if status != 204:
            raise UploadError(status, body)
        self.retries = 0
        return int(headers["upload-offset"])
