"""Auth's signing keys: Ed25519 private keys, one PEM file per key in AUTH_KEYS_DIR.

A file is `<kid>.pem` (PKCS#8, unencrypted, mode 0600). `python -m video2mp3.auth keys new`
and `keys rotate` name keys `<UTC time>-<random>` (e.g. 20250101T120000Z-3fa9c1),
so the name says when the key was made; a file named otherwise counts from its
modification time.

Rotation without failed requests, across replicas that notice new files at
different times (every KEYS_RELOAD_S, re-read without a restart):
  * a new key is published in the JWKS at once but signs only once it is
    KEY_ACTIVATE_AFTER_S old, so every verifier can hold it before the first
    token it signed arrives;
  * the key it replaces stays published until every token it signed has
    expired (its successor's activation + TOKEN_TTL_SECONDS + leeway + one
    reload period), then is dropped from the JWKS (the file can be deleted).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from video2mp3.auth.config import AuthConfig
from video2mp3.core import tokens

log = logging.getLogger(__name__)

KID_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_KID_TIME = re.compile(r"^(\d{8}T\d{6}Z)-")


class NoSigningKey(Exception):
    """No usable private key where the configuration says keys are."""


@dataclasses.dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey
    created: float  # epoch seconds

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()


def new_kid(now: float | None = None) -> str:
    t = dt.datetime.fromtimestamp(now if now is not None else time.time(), dt.UTC)
    return f"{t.strftime(KID_TIME_FORMAT)}-{secrets.token_hex(3)}"


def generate(now: float | None = None) -> SigningKey:
    now = time.time() if now is None else now
    return SigningKey(new_kid(now), Ed25519PrivateKey.generate(), now)


def write_key(keys_dir: Path, key: SigningKey) -> Path:
    """Write `key` as keys_dir/<kid>.pem, readable by its owner only; never overwrites."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    path = keys_dir / f"{key.kid}.pem"
    tmp = keys_dir / f".{key.kid}.pem.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.link(tmp, path)  # fails if it exists; readers never see half a file
    tmp.unlink()
    return path


def ensure_key(keys_dir: Path) -> bool:
    """Create a first key in keys_dir unless it holds one (make run). True if one was created."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys_dir, 0o700)
    if load_dir(keys_dir):
        return False
    write_key(keys_dir, generate())
    return True


def _created(kid: str, path: Path) -> float:
    m = _KID_TIME.match(kid)
    if m:
        return dt.datetime.strptime(m.group(1), KID_TIME_FORMAT).replace(tzinfo=dt.UTC).timestamp()
    return path.stat().st_mtime


def load_dir(keys_dir: Path) -> list[SigningKey]:
    """Every valid Ed25519 private key in keys_dir, oldest first. Bad files are logged and skipped."""
    found = []
    for path in sorted(keys_dir.glob("*.pem")):
        kid = path.stem
        if not tokens.KID_RE.match(kid):
            log.warning("ignoring key file %s: its name is not a valid kid (letters, digits, _ and -)", path)
            continue
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as e:
            log.warning("ignoring key file %s: %s", path, e)
            continue
        if not isinstance(key, Ed25519PrivateKey):
            log.warning("ignoring key file %s: not an Ed25519 private key", path)
            continue
        if path.stat().st_mode & 0o007:  # group access is how Kubernetes' fsGroup grants it
            log.warning("key file %s is readable by every user; chmod 600 it", path)
        found.append(SigningKey(kid, key, _created(kid, path)))
    found.sort(key=lambda k: (k.created, k.kid))
    return found


class KeyRing:
    """The keys auth signs with and publishes; re-reads keys_dir on reload()."""

    def __init__(self, keys_dir: Path | None, *, token_ttl_s: float, reload_s: float,
                 activate_after_s: float, ephemeral: SigningKey | None = None):
        self.keys_dir = keys_dir
        self.activate_after_s = activate_after_s
        # How long a replaced key stays published after its successor starts signing.
        self.retention_s = token_ttl_s + tokens.LEEWAY_S + reload_s
        self._lock = threading.Lock()
        self._keys: list[SigningKey] = [ephemeral] if ephemeral else []
        if keys_dir is not None:
            self.reload()
            if not self._keys:
                raise NoSigningKey(
                    f"no Ed25519 private key (<kid>.pem) in AUTH_KEYS_DIR={keys_dir}; "
                    f"create one with `python -m video2mp3.auth keys new --dir {keys_dir}`")

    def reload(self) -> None:
        if self.keys_dir is None:
            return
        keys = load_dir(self.keys_dir) if self.keys_dir.is_dir() else []
        if not keys:
            # Keep signing with what we have rather than going dark on a bad deploy.
            if self._keys:
                log.error("no valid key in %s any more; keeping the %d loaded", self.keys_dir, len(self._keys))
            return
        with self._lock:
            before = {k.kid for k in self._keys}
            self._keys = keys
        added = [k.kid for k in keys if k.kid not in before]
        if added and before:
            log.info("loaded new signing key(s) %s", ", ".join(added))

    def signing(self, now: float | None = None) -> SigningKey:
        now = time.time() if now is None else now
        with self._lock:
            keys = list(self._keys)
        active = [k for k in keys if k.created + self.activate_after_s <= now]
        # Before any key is old enough (a fresh deployment), the oldest signs.
        return active[-1] if active else keys[0]

    def published(self, now: float | None = None) -> list[SigningKey]:
        """The signing key, newer ones (pre-published) and replaced ones whose tokens may still be alive."""
        now = time.time() if now is None else now
        with self._lock:
            keys = list(self._keys)
        current = self.signing(now)
        out = []
        for i, k in enumerate(keys):
            if k.created >= current.created:
                out.append(k)
                continue
            successor = keys[i + 1]
            retired_at = successor.created + self.activate_after_s
            if now < retired_at + self.retention_s:
                out.append(k)
        return out

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        for k in self.published():
            if k.kid == kid:
                return k.public_key
        return None

    def jwks(self) -> list[dict[str, str]]:
        return [tokens.public_jwk(k.kid, k.public_key) for k in self.published()]


def configured_ring(cfg: AuthConfig, keys_dir: Path | None = None) -> KeyRing:
    """The keys the settings name: `keys_dir` (default AUTH_KEYS_DIR), else, outside production,
    an ephemeral key. SystemExit with one line saying what to provide when there are none."""
    ttl, reload_s, activate = cfg.token_ttl_seconds, cfg.keys_reload_s, cfg.key_activate_after_s
    keys_dir = keys_dir or cfg.keys_dir
    if keys_dir is not None:
        try:
            return KeyRing(keys_dir, token_ttl_s=ttl, reload_s=reload_s, activate_after_s=activate)
        except NoSigningKey as e:
            raise SystemExit(f"auth: {e}") from None
    if cfg.environment.production:
        raise SystemExit(
            "auth: no signing key: VIDEO2MP3_ENV=production needs AUTH_KEYS_DIR, a directory of Ed25519 "
            "private keys (create one with `python -m video2mp3.auth keys new --dir DIR`; in Kubernetes, the "
            "video2mp3-auth-keys Secret)")
    log.warning("AUTH_KEYS_DIR is not set: signing with an ephemeral key; every token dies with this "
                "process (set AUTH_KEYS_DIR, as `make run` does)")
    return KeyRing(None, token_ttl_s=ttl, reload_s=reload_s, activate_after_s=activate, ephemeral=generate())
