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
from video2mp3.auth.sessions import SessionSettings
from video2mp3.core.settings import Environment, MediaEndpoint, MysqlSettings, group, setting


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    port: int = setting("AUTH_PORT", 50051, minimum=1, help="auth's gRPC port")
    mysql: MysqlSettings = group(MysqlSettings)
    token_ttl_seconds: int = setting("TOKEN_TTL_SECONDS", 3600, minimum=1, help=(
        "access token lifetime, seconds; also how long a replaced signing key stays published"))
    # Login sessions and their refresh tokens (auth/sessions.py).
    sessions: SessionSettings = group(SessionSettings)
    # -- signing keys (auth/keys.py) --
    # VIDEO2MP3_ENV=production (compose, Kubernetes): no key configured means refuse to start.
    environment: Environment = group(Environment)
    keys_dir: Path | None = setting("AUTH_KEYS_DIR", None, help=(
        "directory of Ed25519 private keys, `<kid>.pem` (`python -m video2mp3.auth keys new`). Unset: outside "
        "production an ephemeral key, so tokens die with the process; `make run` sets `./data/keys`"))
    keys_reload_s: float = setting("KEYS_RELOAD_S", 10.0, minimum=0.05, help=(
        "how often `AUTH_KEYS_DIR` is re-read, seconds (new keys without a restart)"))
    key_activate_after_s: float = setting("KEY_ACTIVATE_AFTER_S", 120.0, minimum=0, help=(
        "a new key is published at once and signs once this old, seconds, so every gateway has fetched it first"))
    # -- abuse limits (auth/login_limits.py) --
    allow_signup: bool = setting("ALLOW_SIGNUP", True, help=(
        "`false`: SignUp answers PERMISSION_DENIED / 403 (reason `SIGNUP_DISABLED`) and administrators create "
        "users (`python -m video2mp3.auth users create`)"))
    login_limits: Limits = group(Limits)
    # The Media service, which DeleteMe asks to delete the caller's data.
    media: MediaEndpoint = group(MediaEndpoint)
    db_check_interval: float = setting("DB_CHECK_INTERVAL_SECONDS", 2.0, minimum=0.05, help=(
        "how often auth checks MySQL, seconds (health status, and retrying the schema)"))
    grace_seconds: float = setting("GRACE_SECONDS", 5.0, minimum=0, help=(
        "seconds in-flight RPCs get to finish after SIGTERM"))
    # 4 at once bound the peak at 256 MiB.
    hash_concurrency: int = setting(
        "HASH_CONCURRENCY", min(4, os.cpu_count() or 1), minimum=1, shown_default="min(4, number of CPUs)",
        help="argon2id password hashes at once (each ~0.1 s of CPU and 64 MiB); more logins wait")
    metrics_port: int = setting("AUTH_METRICS_PORT", 9101, minimum=0, help="Prometheus `/metrics` port; `0`: off")
