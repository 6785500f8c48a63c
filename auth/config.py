"""Every setting of the auth service (see common/settings.py for the idiom).

The seed's names are kept (MYSQL_HOST, MYSQL_USER, MYSQL_PASSWORD, MYSQL_DB,
SECRET_KEY); the rest are new and all have defaults that work on a developer
machine with a local MySQL/MariaDB.
"""
from __future__ import annotations

import dataclasses
import os

from common.settings import MysqlSettings, group, setting
from common.tokens import TokenSettings


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    port: int = setting("AUTH_PORT", 50051, minimum=1)
    mysql: MysqlSettings = group(MysqlSettings)
    tokens: TokenSettings = group(TokenSettings)
    token_ttl_seconds: int = setting("TOKEN_TTL_SECONDS", 3600, minimum=1)
    # How often the background checker pings MySQL (health status, schema retry).
    db_check_interval: float = setting("DB_CHECK_INTERVAL_SECONDS", 2.0, minimum=0.05)
    # In-flight RPCs get this long to finish after SIGTERM.
    grace_seconds: float = setting("GRACE_SECONDS", 5.0, minimum=0)
    # Argon2id hashes at most this many passwords at once: each takes ~0.1 s of
    # CPU and 64 MiB, so 4 bound the peak at 256 MiB; more requests just queue.
    hash_concurrency: int = setting("HASH_CONCURRENCY", min(4, os.cpu_count() or 1), minimum=1)
    # Prometheus /metrics; 0: off.
    metrics_port: int = setting("AUTH_METRICS_PORT", 9101, minimum=0)
