"""Every setting of the auth service (see core/settings.py for the idiom).

The seed's names are kept (MYSQL_HOST, MYSQL_USER, MYSQL_PASSWORD, MYSQL_DB);
the rest are new and all have defaults that work on a developer machine with a
local MySQL/MariaDB. The seed's SECRET_KEY is gone: tokens are signed with the
Ed25519 keys in AUTH_KEYS_DIR (auth/keys.py) and verified with their public halves.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from video2mp3.auth.login_limits import Limits
from video2mp3.core.settings import Environment, MediaEndpoint, MysqlSettings, group, setting


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    port: int = setting("AUTH_PORT", 50051, minimum=1)
    mysql: MysqlSettings = group(MysqlSettings)
    token_ttl_seconds: int = setting("TOKEN_TTL_SECONDS", 3600, minimum=1)
    # -- signing keys (auth/keys.py) --
    # VIDEO2MP3_ENV=production (compose, Kubernetes): no key configured means refuse to start.
    environment: Environment = group(Environment)
    # Directory of Ed25519 private keys, <kid>.pem. Unset: outside production,
    # an ephemeral key (tokens die with the process).
    keys_dir: Path | None = setting("AUTH_KEYS_DIR", None)
    # How often the directory is re-read (new keys without a restart).
    keys_reload_s: float = setting("KEYS_RELOAD_S", 10.0, minimum=0.05)
    # A new key signs only once this old, so every verifier has fetched it first.
    key_activate_after_s: float = setting("KEY_ACTIVATE_AFTER_S", 120.0, minimum=0)
    # -- abuse limits (auth/login_limits.py) --
    allow_signup: bool = setting("ALLOW_SIGNUP", True)
    login_limits: Limits = group(Limits)
    # The Media service, which DeleteMe asks to delete the caller's data.
    media: MediaEndpoint = group(MediaEndpoint)
    # How often the background checker pings MySQL (health status, schema retry).
    db_check_interval: float = setting("DB_CHECK_INTERVAL_SECONDS", 2.0, minimum=0.05)
    # In-flight RPCs get this long to finish after SIGTERM.
    grace_seconds: float = setting("GRACE_SECONDS", 5.0, minimum=0)
    # Argon2id hashes at most this many passwords at once: each takes ~0.1 s of
    # CPU and 64 MiB, so 4 bound the peak at 256 MiB; more requests just queue.
    hash_concurrency: int = setting("HASH_CONCURRENCY", min(4, os.cpu_count() or 1), minimum=1)
    # Prometheus /metrics; 0: off.
    metrics_port: int = setting("AUTH_METRICS_PORT", 9101, minimum=0)
