"""Every setting of the auth service, read from the environment in this one place.

The seed's names are kept (MYSQL_HOST, MYSQL_USER, MYSQL_PASSWORD, MYSQL_DB,
SECRET_KEY); the rest are new and all have defaults that work on a developer
machine with a local MySQL/MariaDB.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

from common.settings import env_float, env_int, env_str
from common.tokens import DEV_SECRET_KEY


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
    secret_key: str = DEV_SECRET_KEY
    token_ttl_seconds: int = 3600
    # How often the background checker pings MySQL (health status, schema retry).
    db_check_interval: float = 2.0
    # In-flight RPCs get this long to finish after SIGTERM.
    grace_seconds: float = 5.0
    # Argon2id hashes at most this many passwords at once: each takes ~0.1 s of
    # CPU and 64 MiB, so 4 bound the peak at 256 MiB; more requests just queue.
    hash_concurrency: int = min(4, os.cpu_count() or 1)

    @property
    def secret_key_is_default(self) -> bool:
        return self.secret_key == DEV_SECRET_KEY


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
        secret_key=env_str("SECRET_KEY", d.secret_key, env),
        token_ttl_seconds=env_int("TOKEN_TTL_SECONDS", d.token_ttl_seconds, env, 1),
        db_check_interval=env_float("DB_CHECK_INTERVAL_SECONDS", d.db_check_interval, env, 0.05),
        grace_seconds=env_float("GRACE_SECONDS", d.grace_seconds, env, 0),
        hash_concurrency=env_int("HASH_CONCURRENCY", d.hash_concurrency, env, 1),
    )
