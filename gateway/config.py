"""Every setting of the gateway (MediaService; see core/settings.py for the idiom)."""
from __future__ import annotations

import dataclasses

from video2mp3.core.settings import AuthEndpoint, MongoSettings, RabbitSettings, group, setting
from video2mp3.domain.retention import RetentionSettings
from video2mp3.gateway.webhooks import WebhookSettings


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    port: int = setting("MEDIA_PORT", 50052)
    mongo: MongoSettings = group(MongoSettings)
    rabbit: RabbitSettings = group(RabbitSettings)
    auth: AuthEndpoint = group(AuthEndpoint)
    # Token keys (gateway/jwks.py): the whole set is refetched this often, and an
    # unknown kid refetches it at most this often.
    jwks_refresh_s: float = setting("JWKS_REFRESH_S", 60.0, minimum=0.1)
    jwks_min_refetch_s: float = setting("JWKS_MIN_REFETCH_S", 10.0, minimum=0)
    # User existence (gateway/user_check.py): a deleted user's tokens stop working
    # within the TTL; while auth is down, a confirmed user is trusted this long.
    user_cache_ttl_s: float = setting("USER_CACHE_TTL_S", 30.0, minimum=0)
    user_cache_stale_s: float = setting("USER_CACHE_STALE_S", 600.0, minimum=0)
    max_upload_bytes: int = setting("MAX_UPLOAD_BYTES", 2 * 1024**3)
    max_concurrent_uploads: int = setting("MAX_CONCURRENT_UPLOADS", 8)
    # A resumable (tus) upload not complete this long after its creation is
    # deleted with everything written (gateway/tus.py).
    upload_expiry_s: float = setting("UPLOAD_EXPIRY_S", 86400.0, minimum=60)
    # Each WatchJob (a server stream) holds one handler thread while it runs:
    # MAX_WATCHERS of them at most, more get RESOURCE_EXHAUSTED, and the
    # threads left over (MEDIA_MAX_WORKERS - MAX_WATCHERS) serve everything else.
    max_workers: int = setting("MEDIA_MAX_WORKERS", 128, minimum=2)
    max_watchers: int = setting("MAX_WATCHERS", 64, minimum=1)
    # One query per interval for all the jobs watched in this process.
    watch_poll_interval_s: float = setting("WATCH_POLL_INTERVAL_S", 0.5, minimum=0.05)
    retention: RetentionSettings = group(RetentionSettings)
    # Webhooks: where deliveries may go, timeouts, retries (gateway/webhooks.py).
    webhooks: WebhookSettings = group(WebhookSettings)
    republish_interval_s: float = setting("REPUBLISH_INTERVAL_S", 5.0)
    grace_seconds: float = setting("GRACE_SECONDS", 10.0)
    # Chunks of an upload with no files document and nothing written for this
    # long are removed (a gateway killed mid-upload).
    orphan_chunk_age_s: float = setting("ORPHAN_CHUNK_AGE_S", 3600.0)
    janitor_interval_s: float = setting("JANITOR_INTERVAL_S", 300.0)
    # Prometheus /metrics (0: off) and how often jobs are counted by state for it.
    metrics_port: int = setting("MEDIA_METRICS_PORT", 9102, minimum=0)
    job_stats_interval_s: float = setting("JOB_STATS_INTERVAL_S", 15.0, minimum=0.1)
    # Uploads are refused while the store's disk has less than this free
    # (gateway/storage_space.py; its folder is MongoSettings.data_dir if local).
    storage_reserve_mb: int = setting("STORAGE_RESERVE_MB", 512, minimum=0)

    @property
    def storage_reserve_bytes(self) -> int:
        return self.storage_reserve_mb * 2**20

    def __post_init__(self):
        if self.max_watchers >= self.max_workers:
            raise SystemExit(f"MAX_WATCHERS ({self.max_watchers}) must be less than "
                             f"MEDIA_MAX_WORKERS ({self.max_workers}): watchers would take every thread")
