"""Every setting of the converter (see core/settings.py for the idiom)."""
from __future__ import annotations

import dataclasses
import os
from typing import Literal

from video2mp3.core.settings import MongoSettings, RabbitSettings, group, setting
from video2mp3.domain.retention import RetentionSettings

CPUS = os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class ConverterConfig:
    mongo: MongoSettings = group(MongoSettings)
    rabbit: RabbitSettings = group(RabbitSettings)
    # Only VIDEO_RETENTION matters here: 0 deletes the video as the job ends.
    retention: RetentionSettings = group(RetentionSettings)
    # As asked; `workers` is what runs (0 or less means 1).
    requested_workers: int = setting("CONVERTER_WORKERS", CPUS)
    grace_seconds: float = setting("GRACE_SECONDS", 10.0)
    # Pause between retries of a job whose storage is unreachable.
    retry_delay_s: float = setting("CONVERTER_RETRY_DELAY_S", 2.0)
    # Decode/write on helper threads while LAME encodes; "auto" decides per
    # job (converter/policy.overlap).
    overlap_mode: Literal["auto", "on", "off"] = setting("CONVERTER_OVERLAP", "auto")
    # A worker renews its lease on a job as it makes progress; a job whose
    # lease has run out (its worker died) may be taken over by a redelivery,
    # which waits that long at most. Longer than any pause in progress.
    lease_s: float = setting("CONVERTER_LEASE_S", 15.0)
    # Workers run at this nice level: conversions are batch work, and on a
    # small box they would otherwise starve the API and the store it reads.
    nice: int = setting("CONVERTER_NICE", 10)
    # Prometheus /metrics, summed over the workers by the supervisor; 0: off.
    metrics_port: int = setting("CONVERTER_METRICS_PORT", 9103, minimum=0)
    # How often the supervisor checks MongoDB and RabbitMQ (video2mp3_dependency_up).
    dependency_check_s: float = setting("CONVERTER_CHECK_INTERVAL_S", 5.0, minimum=0.1)

    @property
    def workers(self) -> int:
        return max(1, self.requested_workers)
