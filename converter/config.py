"""Every setting of the converter, from the environment."""
from __future__ import annotations

import dataclasses
import os

from common.settings import MongoSettings, RabbitSettings, env_float, env_int, env_str


@dataclasses.dataclass(frozen=True)
class ConverterConfig:
    mongo: MongoSettings
    rabbit: RabbitSettings
    workers: int
    grace_seconds: float
    # Pause between retries of a job whose storage is unreachable.
    retry_delay_s: float
    # Decode/write on helper threads while LAME encodes: one job finishes
    # sooner (~1.4 cores), but only pays off when cores are left over.
    overlap: bool
    # A worker renews its lease on a job as it makes progress; a job whose
    # lease has run out (its worker died) may be taken over by a redelivery,
    # which waits that long at most. Longer than any pause in progress.
    lease_s: float
    # Workers run at this nice level: conversions are batch work, and on a
    # small box they would otherwise starve the API and the store it reads.
    nice: int = 0

    @classmethod
    def from_env(cls) -> "ConverterConfig":
        cpus = os.cpu_count() or 1
        workers = max(1, env_int("CONVERTER_WORKERS", cpus))
        overlap = env_str("CONVERTER_OVERLAP", "auto").lower()
        if overlap not in ("auto", "on", "off"):
            raise SystemExit(f"CONVERTER_OVERLAP must be auto, on or off, got {overlap!r}")
        return cls(
            mongo=MongoSettings.from_env(),
            rabbit=RabbitSettings.from_env(),
            workers=workers,
            grace_seconds=env_float("GRACE_SECONDS", 10.0),
            retry_delay_s=env_float("CONVERTER_RETRY_DELAY_S", 2.0),
            overlap=overlap == "on" or (overlap == "auto" and workers < cpus),
            lease_s=env_float("CONVERTER_LEASE_S", 15.0),
            nice=env_int("CONVERTER_NICE", 10),
        )
