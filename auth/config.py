"""Every setting of the auth service, read from the environment in this one place.

The seed's names are kept (MYSQL_HOST, MYSQL_USER, MYSQL_PASSWORD, MYSQL_DB);
the rest are new and all have defaults that work on a developer machine with a
local MySQL/MariaDB. The seed's SECRET_KEY is gone: tokens are signed with the
Ed25519 keys in AUTH_KEYS_DIR (auth/keys.py) and verified with their public halves.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

from common.settings import env_float, env_int, env_str

PRODUCTION = "production"


def _flag(name: str, default: bool, env: Mapping[str, str]) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"{name} must be true or false, got {raw!r}")


@dataclasses.dataclass(frozen=True)
class Config:
    port: int = 50051
    mysql_host: str = "127.0.0.1"
    mysql_port: int = 3306
    mysql_user: str = "root"
    mysql_password: str = ""
    mysql_db: str = "video2mp3"
    # Bounded so that an unreachable or hung MySQL fails an RPC in seconds.
    mysql_connect_timeout: float = 3.0
    mysql_read_timeout: float = 5.0
    mysql_write_timeout: float = 5.0
    mysql_pool_size: int = 8
    token_ttl_seconds: int = 3600
    # -- signing keys (auth/keys.py) --
    # "production" (compose, Kubernetes): no key configured means refuse to start.
    environment: str = "development"
    # Directory of Ed25519 private keys, <kid>.pem. Empty: outside production,
    # an ephemeral key (tokens die with the process).
    keys_dir: str = ""
    # How often the directory is re-read (new keys without a restart).
    keys_reload_s: float = 10.0
    # A new key signs only once this old, so every verifier has fetched it first.
    key_activate_after_s: float = 120.0
    # -- abuse limits (auth/login_limits.py) --
    allow_signup: bool = True
    # Failed logins allowed per window before each further one blocks for
    # block_base * 2^(n - allowed) seconds, capped.
    login_account_failures: int = 5
    login_address_failures: int = 20
    login_window_s: float = 900.0
    login_block_base_s: float = 1.0
    login_block_max_s: float = 900.0
    # The Media service, which DeleteMe asks to delete the caller's data.
    media_addr: str = "127.0.0.1:50052"
    # How often the background checker pings MySQL (health status, schema retry).
    db_check_interval: float = 2.0
    # In-flight RPCs get this long to finish after SIGTERM.
    grace_seconds: float = 5.0
    # Argon2id hashes at most this many passwords at once: each takes ~0.1 s of
    # CPU and 64 MiB, so 4 bound the peak at 256 MiB; more requests just queue.
    hash_concurrency: int = min(4, os.cpu_count() or 1)

    @property
    def production(self) -> bool:
        return self.environment == PRODUCTION


def load(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    d = Config()
    # An empty MYSQL_PASSWORD is a real value (the default), so it is read as is.
    return Config(
        port=env_int("AUTH_PORT", d.port, env, 1),
        mysql_host=env_str("MYSQL_HOST", d.mysql_host, env),
        mysql_port=env_int("MYSQL_PORT", d.mysql_port, env, 1),
        mysql_user=env_str("MYSQL_USER", d.mysql_user, env),
        mysql_password=env.get("MYSQL_PASSWORD", d.mysql_password),
        mysql_db=env_str("MYSQL_DB", d.mysql_db, env),
        mysql_connect_timeout=env_float("MYSQL_CONNECT_TIMEOUT", d.mysql_connect_timeout, env, 0.1),
        mysql_read_timeout=env_float("MYSQL_READ_TIMEOUT", d.mysql_read_timeout, env, 0.1),
        mysql_write_timeout=env_float("MYSQL_WRITE_TIMEOUT", d.mysql_write_timeout, env, 0.1),
        mysql_pool_size=env_int("MYSQL_POOL_SIZE", d.mysql_pool_size, env, 1),
        token_ttl_seconds=env_int("TOKEN_TTL_SECONDS", d.token_ttl_seconds, env, 1),
        environment=env_str("VIDEO2MP3_ENV", d.environment, env).strip().lower(),
        keys_dir=env_str("AUTH_KEYS_DIR", d.keys_dir, env),
        keys_reload_s=env_float("KEYS_RELOAD_S", d.keys_reload_s, env, 0.05),
        key_activate_after_s=env_float("KEY_ACTIVATE_AFTER_S", d.key_activate_after_s, env, 0),
        allow_signup=_flag("ALLOW_SIGNUP", d.allow_signup, env),
        login_account_failures=env_int("LOGIN_ACCOUNT_FAILURES", d.login_account_failures, env, 1),
        login_address_failures=env_int("LOGIN_ADDRESS_FAILURES", d.login_address_failures, env, 1),
        login_window_s=env_float("LOGIN_WINDOW_S", d.login_window_s, env, 1),
        login_block_base_s=env_float("LOGIN_BLOCK_BASE_S", d.login_block_base_s, env, 0.01),
        login_block_max_s=env_float("LOGIN_BLOCK_MAX_S", d.login_block_max_s, env, 0.01),
        media_addr=env_str("MEDIA_ADDR", d.media_addr, env),
        db_check_interval=env_float("DB_CHECK_INTERVAL_SECONDS", d.db_check_interval, env, 0.05),
        grace_seconds=env_float("GRACE_SECONDS", d.grace_seconds, env, 0),
        hash_concurrency=env_int("HASH_CONCURRENCY", d.hash_concurrency, env, 1),
    )
