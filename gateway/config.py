"""Every setting of the gateway (MediaService; see common/settings.py for the idiom)."""
from __future__ import annotations

import dataclasses

from common.settings import AuthEndpoint, MongoSettings, RabbitSettings, group, setting
from common.tokens import TokenSettings


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    port: int = setting("MEDIA_PORT", 50052)
    mongo: MongoSettings = group(MongoSettings)
    rabbit: RabbitSettings = group(RabbitSettings)
    tokens: TokenSettings = group(TokenSettings)
    auth: AuthEndpoint = group(AuthEndpoint)
    max_upload_bytes: int = setting("MAX_UPLOAD_BYTES", 2 * 1024**3)
    max_concurrent_uploads: int = setting("MAX_CONCURRENT_UPLOADS", 8)
    max_workers: int = setting("MEDIA_MAX_WORKERS", 32)
    republish_interval_s: float = setting("REPUBLISH_INTERVAL_S", 5.0)
    grace_seconds: float = setting("GRACE_SECONDS", 10.0)
    # Chunks of an upload with no files document and nothing written for this
    # long are removed (a gateway killed mid-upload).
    orphan_chunk_age_s: float = setting("ORPHAN_CHUNK_AGE_S", 3600.0)
    janitor_interval_s: float = setting("JANITOR_INTERVAL_S", 300.0)
    # Prometheus /metrics (0: off) and how often jobs are counted by state for it.
    metrics_port: int = setting("MEDIA_METRICS_PORT", 9102, minimum=0)
    job_stats_interval_s: float = setting("JOB_STATS_INTERVAL_S", 15.0, minimum=0.1)
