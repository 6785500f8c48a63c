"""Every setting of the converter (see core/settings.py for the idiom)."""
from __future__ import annotations

import dataclasses
import os
from typing import Literal

from video2mp3.core.settings import MongoSettings, RabbitSettings, group, setting
from video2mp3.domain.limits import JobLimits
from video2mp3.domain.retention import RetentionSettings

CPUS = os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class ConverterConfig:
    mongo: MongoSettings = group(MongoSettings)
    rabbit: RabbitSettings = group(RabbitSettings)
    # Only VIDEO_RETENTION matters here: 0 deletes the video as the job ends.
    retention: RetentionSettings = group(RetentionSettings)
    # Enforced while decoding (converter/transcode.py), whatever the file declares.
    limits: JobLimits = group(JobLimits)
    # As asked; `workers` is what runs (0 or less means 1).
    requested_workers: int = setting("CONVERTER_WORKERS", CPUS, shown_default="number of CPUs", help=(
        "worker processes, each taking one task at a time (prefetch 1); also the most cores conversions use "
        "(`CONVERTER_OVERLAP`). 0 or less means 1"))
    # The express lane (gateway/outbox.py): extra workers that take only
    # short jobs of users with nothing else in flight, at once.
    express_workers: int = setting("CONVERTER_EXPRESS_WORKERS", 1, minimum=0, help=(
        "worker processes on the express lane (`<QUEUE_NAME>.express`), besides `CONVERTER_WORKERS`: they take "
        "the job of a user with nothing else queued or converting at once, even while every other worker is "
        "busy with another user's backlog; `0`: none (the gateways see no consumer on the lane and stop using it)"))
    express_cpu_s: float = setting("EXPRESS_CPU_S", 1.0, minimum=0.1, help=(
        "CPU seconds an express conversion may use; beyond it the job leaves the express lane for the normal "
        "queue (in its user's turn) and starts again there, so a long file cannot hold the lane"))
    express_max_audio_s: float = setting("EXPRESS_MAX_AUDIO_S", 60.0, minimum=0, help=(
        "an express conversion whose file declares more audio than this, seconds, leaves the express lane before "
        "decoding anything (a file that declares nothing, or lies, is caught by `EXPRESS_CPU_S`)"))
    cpu_budget_s: float = setting("CONVERTER_CPU_BUDGET_S", 900.0, minimum=1, help=(
        "CPU seconds one conversion may use (all its threads); beyond it the job fails saying so, instead of "
        "spinning on a pathological file. Checked as it decodes, and by the kernel (RLIMIT_CPU) if it stops "
        "reporting"))
    memory_limit_mb: int = setting("CONVERTER_MEMORY_LIMIT_MB", 4096, minimum=0, help=(
        "address space of each worker process, MiB (RLIMIT_AS): a file that makes the decoder allocate beyond it "
        "fails instead of exhausting the machine; `0`: no limit"))
    grace_seconds: float = setting("GRACE_SECONDS", 10.0, help=(
        "seconds a worker gets after SIGTERM to finish the job in hand; then it deletes the partial MP3 and "
        "hands the task back"))
    retry_delay_s: float = setting("CONVERTER_RETRY_DELAY_S", 2.0, help=(
        "pause between retries of a job while MongoDB is unreachable, seconds"))
    # "auto" decides per job (converter/policy.overlap).
    overlap_mode: Literal["auto", "on", "off"] = setting("CONVERTER_OVERLAP", "auto", help=(
        "let one conversion use more than one core: decode and write on helper threads, and one LAME encoder per "
        "core on ~25 s segments joined into one stream. `on`: every CPU, always; `off`: never; `auto`: per job, "
        "only when it is the only work in sight (no other worker converting, nothing queued), then on the idle "
        "workers' cores, so never more cores than `CONVERTER_WORKERS`; asked again before each segment"))
    # A worker renews its lease on a job as it makes progress; a redelivery
    # waits that long at most. Longer than any pause in progress.
    lease_s: float = setting("CONVERTER_LEASE_S", 15.0, help=(
        "seconds after which a job whose worker stopped renewing its lease (it died) is taken over by the "
        "redelivered task"))
    nice: int = setting("CONVERTER_NICE", 10, help=(
        "nice level of the worker processes (batch work: keeps the API and the store responsive)"))
    express_nice: int = setting("CONVERTER_EXPRESS_NICE", 5, help=(
        "nice level of the express workers: below `CONVERTER_NICE`, so a short job gets most of a core while the "
        "normal workers convert a backlog"))
    # converter/spool.py: an MP4 with its index at the end, copied as it arrives.
    spool_dir: str = setting("CONVERTER_SPOOL_DIR", "", allow_empty=True, shown_default="the system's temporary "
                             "directory", help=(
        "where a worker copies an upload still arriving whose file has its index at the end (an MP4 as most "
        "tools write it), to convert it from there once complete instead of reading it back from MongoDB; the "
        "copy has no name, so a killed worker leaves nothing"))
    spool_max_mb: int = setting("CONVERTER_SPOOL_MAX_MB", 4096, minimum=0, help=(
        "the largest such copy, MiB; a bigger upload is converted from MongoDB once complete. `0`: no copies"))
    spool_reserve_mb: int = setting("CONVERTER_SPOOL_RESERVE_MB", 1024, minimum=0, help=(
        "free space a copy always leaves on `CONVERTER_SPOOL_DIR`'s disk, MiB; where it would take more, "
        "copying stops and the job is converted from MongoDB once complete"))
    metrics_port: int = setting("CONVERTER_METRICS_PORT", 9103, minimum=0, help=(
        "Prometheus `/metrics` port, the sum over the workers; `0`: off"))
    dependency_check_s: float = setting("CONVERTER_CHECK_INTERVAL_S", 5.0, minimum=0.1, help=(
        "how often the supervisor checks MongoDB and RabbitMQ (`video2mp3_dependency_up`, queue depth), seconds"))

    @property
    def workers(self) -> int:
        return max(1, self.requested_workers)
