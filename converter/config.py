"""Every setting of the converter, from the environment."""
from __future__ import annotations

import dataclasses
import os

from common.settings import MongoSettings, RabbitSettings, env_float, env_int


@dataclasses.dataclass(frozen=True)
class ConverterConfig:
    mongo: MongoSettings
    rabbit: RabbitSettings
    workers: int
    grace_seconds: float
    # Pause between retries of a job whose storage is unreachable.
    retry_delay_s: float

    @classmethod
    def from_env(cls) -> "ConverterConfig":
        return cls(
            mongo=MongoSettings.from_env(),
            rabbit=RabbitSettings.from_env(),
            workers=max(1, env_int("CONVERTER_WORKERS", os.cpu_count() or 1)),
            grace_seconds=env_float("GRACE_SECONDS", 10.0),
            retry_delay_s=env_float("CONVERTER_RETRY_DELAY_S", 2.0),
        )
