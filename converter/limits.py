"""What one conversion may use: CPU time and memory (docs/security.md, "Uploads").

Every upload is hostile until converted: a file can be made to decode slowly
(a pathological bitstream, a huge number of tiny packets) or to make the
decoder allocate a lot. A worker process converts one task at a time
(prefetch 1), so the process's own counters are the conversion's:

* CPU: `CpuBudget` counts the process's CPU seconds (every thread: the decoder,
  the LAME encoders, the writer) since the task began. Task.on_progress, called
  as audio is decoded, compares it with CONVERTER_CPU_BUDGET_S (the job fails
  with CpuBudgetExceeded, naming the limit) and, on the express lane, with
  EXPRESS_CPU_S (the job leaves the lane). A conversion stuck inside FFmpeg
  never reports progress, so the kernel backs the check up: RLIMIT_CPU's soft
  limit is set a little beyond the budget for the task (arm) and lifted after
  it (disarm); crossing it sends SIGXCPU, whose handler (converter/worker.py)
  fails the job and ends the process, which the supervisor replaces. Only the
  soft limit moves: an unprivileged process cannot raise a hard limit again.
* Memory: RLIMIT_AS for the whole worker process (CONVERTER_MEMORY_LIMIT_MB),
  set once as it starts. An allocation beyond it fails (MemoryError in
  Python, ENOMEM in FFmpeg) and the job fails with MemoryLimitExceeded.
"""
from __future__ import annotations

import math
import resource

from video2mp3.converter.transcode import ConversionError

# The kernel's backstop fires this far past the budget: the cooperative check
# (every ~0.25 s of decoding) normally ends the conversion long before.
BACKSTOP_SLACK_S = 15.0


class CpuBudgetExceeded(ConversionError):
    def __init__(self, budget_s: float):
        super().__init__(f"the conversion used more than its CPU time limit of {budget_s:g} s "
                         "(CONVERTER_CPU_BUDGET_S); the file decodes too slowly")


class MemoryLimitExceeded(ConversionError):
    def __init__(self, limit_mb: int):
        super().__init__(f"the conversion needed more than the memory limit of {limit_mb} MiB "
                         "(CONVERTER_MEMORY_LIMIT_MB)")


def cpu_seconds() -> float:
    """CPU seconds this process has used, user and system, every thread."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CpuBudget:
    """The CPU seconds of one task, counted from its start."""

    def __init__(self) -> None:
        self.start = cpu_seconds()

    def used(self) -> float:
        return cpu_seconds() - self.start


def arm_backstop(budget_s: float) -> None:
    """SIGXCPU once this process has used `budget_s` (+ slack) more CPU seconds."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(cpu_seconds() + budget_s + BACKSTOP_SLACK_S)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def disarm_backstop() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))


def limit_memory(limit_mb: int) -> None:
    """RLIMIT_AS of this process (0: left as it is); never above the hard limit."""
    if limit_mb <= 0:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = limit_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
