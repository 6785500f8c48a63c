"""Every setting of the gateway (MediaService), from the environment."""
from __future__ import annotations

import dataclasses
import logging

from common.settings import MongoSettings, RabbitSettings, env_float, env_int, env_str
from common.tokens import DEV_SECRET_KEY


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    port: int
    mongo: MongoSettings
    rabbit: RabbitSettings
    secret_key: str
    auth_addr: str
    max_upload_bytes: int
    max_concurrent_uploads: int
    max_workers: int
    republish_interval_s: float
    grace_seconds: float
    orphan_chunk_age_s: float
    janitor_interval_s: float
    store_data_dir: str
    storage_reserve_bytes: int

    @classmethod
    def from_env(cls) -> "GatewayConfig":
        cfg = cls(
            port=env_int("MEDIA_PORT", 50052),
            mongo=MongoSettings.from_env(),
            rabbit=RabbitSettings.from_env(),
            secret_key=env_str("SECRET_KEY", DEV_SECRET_KEY),
            auth_addr=env_str("AUTH_ADDR", "127.0.0.1:50051"),
            max_upload_bytes=env_int("MAX_UPLOAD_BYTES", 2 * 1024**3),
            max_concurrent_uploads=env_int("MAX_CONCURRENT_UPLOADS", 8),
            max_workers=env_int("MEDIA_MAX_WORKERS", 32),
            republish_interval_s=env_float("REPUBLISH_INTERVAL_S", 5.0),
            grace_seconds=env_float("GRACE_SECONDS", 10.0),
            # Chunks of an upload with no files document and nothing written
            # for this long are removed (a gateway killed mid-upload).
            orphan_chunk_age_s=env_float("ORPHAN_CHUNK_AGE_S", 3600.0),
            janitor_interval_s=env_float("JANITOR_INTERVAL_S", 300.0),
            # Uploads are refused while the store's disk has less than this free
            # (common/storage_space.py); MONGO_DATA_DIR: its folder, if local.
            store_data_dir=env_str("MONGO_DATA_DIR", ""),
            storage_reserve_bytes=env_int("STORAGE_RESERVE_MB", 512) * 2**20,
        )
        if cfg.secret_key == DEV_SECRET_KEY:
            logging.getLogger(__name__).warning("SECRET_KEY not set; using the development default")
        return cfg
