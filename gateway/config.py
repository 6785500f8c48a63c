"""Every setting of the gateway (MediaService; see core/settings.py for the idiom)."""
from __future__ import annotations

import dataclasses

from video2mp3.core.settings import AuthEndpoint, MongoSettings, RabbitSettings, group, setting
from video2mp3.domain.limits import JobLimits
from video2mp3.domain.retention import RetentionSettings
from video2mp3.gateway.outbox import FairQueueSettings
from video2mp3.gateway.quotas import QuotaSettings
from video2mp3.gateway.webhooks import WebhookSettings


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    port: int = setting("MEDIA_PORT", 50052, help="the gateway's (Media service's) gRPC port")
    mongo: MongoSettings = group(MongoSettings)
    rabbit: RabbitSettings = group(RabbitSettings)
    auth: AuthEndpoint = group(AuthEndpoint)
    # Token keys: gateway/jwks.py.
    jwks_refresh_s: float = setting("JWKS_REFRESH_S", 60.0, minimum=0.1, help=(
        "how often the gateway refetches auth's public keys, seconds"))
    jwks_min_refetch_s: float = setting("JWKS_MIN_REFETCH_S", 10.0, minimum=0, help=(
        "at most how often a token with an unknown `kid` makes it refetch them, seconds"))
    # User existence: gateway/user_check.py.
    user_cache_ttl_s: float = setting(
        "USER_CACHE_TTL_S",
        30.0,
        minimum=0,
        help=(
            'how long "this user and login session still hold" is trusted, seconds: a deleted user\'s or an ended '
            "session's access tokens stop working within it"
        ),
    )
    user_cache_stale_s: float = setting("USER_CACHE_STALE_S", 600.0, minimum=0, help=(
        "how long a confirmed user keeps working while auth is unreachable, seconds"))
    # API keys: gateway/api_keys.py. Never served past it, not even while auth is down.
    api_key_cache_ttl_s: float = setting(
        "API_KEY_CACHE_TTL_S",
        2.0,
        minimum=0,
        help=(
            "how long auth's answer about an API key is trusted, seconds: a deleted key stops working within it; "
            "`0`: ask auth on every call"
        ),
    )
    max_upload_bytes: int = setting("MAX_UPLOAD_BYTES", 2 * 1024**3, help=(
        "larger uploads are refused as soon as they cross it: RESOURCE_EXHAUSTED, 413 over REST (2 GiB by "
        "default)"))
    spool_after_bytes: int = setting("SPOOL_AFTER_BYTES", 16 * 1024**2, minimum=0, help=(
        "an upload of an MP4 with its index at the end (as most tools write it) gets its job once this much has "
        "arrived, and never before it is over `EXPRESS_MAX_BYTES`, so that a converter with nothing else to do "
        "copies it to local disk as it arrives (converter/spool.py) instead of reading it back from MongoDB "
        "after the upload; `0`: never (set it where the converters make no copies, `CONVERTER_SPOOL_MAX_MB=0`)"))
    max_concurrent_uploads: int = setting("MAX_CONCURRENT_UPLOADS", 8, help=(
        "uploads at once; one more gets RESOURCE_EXHAUSTED / 429"))
    upload_expiry_s: float = setting("UPLOAD_EXPIRY_S", 86400.0, minimum=60, help=(
        "a resumable (tus) upload not complete this long after its creation is deleted with everything "
        "written, seconds (gateway/tus.py)"))
    # Each WatchJob (a server stream) holds one handler thread while it runs:
    # MAX_WATCHERS of them at most, more get RESOURCE_EXHAUSTED, and the
    # threads left over (MEDIA_MAX_WORKERS - MAX_WATCHERS) serve everything else.
    max_workers: int = setting("MEDIA_MAX_WORKERS", 128, minimum=2, help=(
        "gRPC handler threads (at most 4x as many RPCs in flight); each WatchJob holds one"))
    max_watchers: int = setting("MAX_WATCHERS", 64, minimum=1, help=(
        "WatchJob streams at once per gateway, less than `MEDIA_MAX_WORKERS`; more get RESOURCE_EXHAUSTED / 429"))
    watch_poll_interval_s: float = setting("WATCH_POLL_INTERVAL_S", 0.5, minimum=0.05, help=(
        "how often the gateway reads every watched job, seconds (one query for all): progress is seen this often; a "
        "job's end is announced by the converter over RabbitMQ and seen at once"))
    retention: RetentionSettings = group(RetentionSettings)
    # Limits per job (domain/limits.py; the converter enforces them too) and quotas per user (gateway/quotas.py).
    limits: JobLimits = group(JobLimits)
    quotas: QuotaSettings = group(QuotaSettings)
    # Webhooks: where deliveries may go, timeouts, retries (gateway/webhooks.py).
    webhooks: WebhookSettings = group(WebhookSettings)
    republish_interval_s: float = setting("REPUBLISH_INTERVAL_S", 0.5, minimum=0.05, help=(
        "how often the outbox publishes the jobs waiting for their user's turn (`FAIR_QUEUE_PER_USER`) and those "
        "RabbitMQ did not confirm, seconds"))
    # Which job goes to RabbitMQ when, and on which lane (gateway/outbox.py).
    fair_queue: FairQueueSettings = group(FairQueueSettings)
    grace_seconds: float = setting("GRACE_SECONDS", 10.0, help="seconds in-flight RPCs get to finish after SIGTERM")
    orphan_chunk_age_s: float = setting("ORPHAN_CHUNK_AGE_S", 3600.0, help=(
        "seconds after which chunks of an upload (video or MP3) with no file and nothing written (its gateway or "
        "worker was killed) are deleted; so is the hidden job of a streamed upload whose gateway stopped beating "
        "this long"))
    janitor_interval_s: float = setting("JANITOR_INTERVAL_S", 300.0, help=(
        "how often the gateway looks for such chunks, seconds"))
    metrics_port: int = setting("MEDIA_METRICS_PORT", 9102, minimum=0, help="Prometheus `/metrics` port; `0`: off")
    job_stats_interval_s: float = setting("JOB_STATS_INTERVAL_S", 15.0, minimum=0.1, help=(
        "how often jobs are counted by state (and the outbox backlog measured) for the metrics, seconds"))
    # gateway/storage_space.py; its folder is MongoSettings.data_dir if local.
    storage_reserve_mb: int = setting("STORAGE_RESERVE_MB", 512, minimum=0, help=(
        "uploads are refused (RESOURCE_EXHAUSTED, reason `STORAGE_FULL`; 507 over REST) while the store's disk "
        "has less than this free, MiB"))

    @property
    def storage_reserve_bytes(self) -> int:
        return self.storage_reserve_mb * 2**20

    def __post_init__(self):
        if self.max_watchers >= self.max_workers:
            raise SystemExit(f"MAX_WATCHERS ({self.max_watchers}) must be less than "
                             f"MEDIA_MAX_WORKERS ({self.max_workers}): watchers would take every thread")
