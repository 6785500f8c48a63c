"""Every setting of the gateway (MediaService), from the environment."""
from __future__ import annotations

import dataclasses

from common.settings import MongoSettings, RabbitSettings, env_float, env_int, env_str


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    port: int
    mongo: MongoSettings
    rabbit: RabbitSettings
    auth_addr: str
    # Token keys (gateway/jwks.py) and user existence (gateway/user_check.py).
    jwks_refresh_s: float
    jwks_min_refetch_s: float
    user_cache_ttl_s: float
    user_cache_stale_s: float
    max_upload_bytes: int
    max_concurrent_uploads: int
    max_workers: int
    republish_interval_s: float
    grace_seconds: float
    orphan_chunk_age_s: float
    janitor_interval_s: float

    @classmethod
    def from_env(cls) -> "GatewayConfig":
        return cls(
            port=env_int("MEDIA_PORT", 50052),
            mongo=MongoSettings.from_env(),
            rabbit=RabbitSettings.from_env(),
            auth_addr=env_str("AUTH_ADDR", "127.0.0.1:50051"),
            jwks_refresh_s=env_float("JWKS_REFRESH_S", 60.0),
            # An unknown kid refetches the JWKS at most this often.
            jwks_min_refetch_s=env_float("JWKS_MIN_REFETCH_S", 10.0),
            user_cache_ttl_s=env_float("USER_CACHE_TTL_S", 30.0),
            user_cache_stale_s=env_float("USER_CACHE_STALE_S", 600.0),
            max_upload_bytes=env_int("MAX_UPLOAD_BYTES", 2 * 1024**3),
            max_concurrent_uploads=env_int("MAX_CONCURRENT_UPLOADS", 8),
            max_workers=env_int("MEDIA_MAX_WORKERS", 32),
            republish_interval_s=env_float("REPUBLISH_INTERVAL_S", 5.0),
            grace_seconds=env_float("GRACE_SECONDS", 10.0),
            # Chunks of an upload with no files document and nothing written
            # for this long are removed (a gateway killed mid-upload).
            orphan_chunk_age_s=env_float("ORPHAN_CHUNK_AGE_S", 3600.0),
            janitor_interval_s=env_float("JANITOR_INTERVAL_S", 300.0),
        )
