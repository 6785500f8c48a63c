"""Limits per job, shared by the gateway (which refuses an upload whose first
bytes already break one) and the converter (which enforces them while it
decodes, whatever the file declared), and how they are said to people.

Defaults (docs/configuration.md; the reasons in docs/api.md, "Limits and quotas"):

    MAX_AUDIO_DURATION_S  3 h: a long film, a full concert or a 3-hour
                          podcast fit; 20 hours of near-silence in a 27 MB
                          Ogg file does not.
    MAX_MP3_MB            450 MiB: 3 hours at 320 kbps, the largest MP3 the
                          duration limit allows at any bitrate (432 MB), so
                          with the defaults it never refuses what the
                          duration limit lets through; an operator lowers it
                          to cap each stored file whatever its length.
"""
from __future__ import annotations

import dataclasses

from video2mp3.core.settings import setting
from video2mp3.domain.mp3_options import DEFAULT_BITRATE_KBPS


@dataclasses.dataclass(frozen=True)
class JobLimits:
    max_audio_s: float = setting("MAX_AUDIO_DURATION_S", 3 * 3600.0, minimum=1, help=(
        "longest audio one job may convert, seconds (3 hours by default): refused at upload (413 over REST) when "
        "the file declares more, else the job FAILS once it decodes more"))
    max_mp3_mb: int = setting("MAX_MP3_MB", 450, minimum=1, help=(
        "largest MP3 one job may make, MiB (450 by default: 3 hours at 320 kbps fit): refused at upload when the "
        "declared duration at the chosen bitrate needs more, else the job FAILS once it writes more"))

    @property
    def max_mp3_bytes(self) -> int:
        return self.max_mp3_mb * 2**20


def duration_text(seconds: float) -> str:
    """3 h, 2 h 30 min, 45 min, 20 s: how a limit or a length is said to people."""
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h and m:
        return f"{h} h {m} min"
    if h:
        return f"{h} h"
    if m:
        return f"{m} min" + (f" {s} s" if s else "")
    return f"{s} s"


def size_text(n: float) -> str:
    """Bytes as people read them: 512 B, 1.5 MB, 5.0 GB (powers of 1024, as the settings' MiB)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def too_long(seconds: float, limits: JobLimits, *, declared: bool) -> str:
    """The sentence a job or an upload is refused with, naming the limit."""
    what = "declares" if declared else "holds more than"
    return (f"the audio is too long: the file {what} {duration_text(seconds)}, and the limit per job is "
            f"{duration_text(limits.max_audio_s)} (MAX_AUDIO_DURATION_S); cut it into parts")


def too_big(n_bytes: float, limits: JobLimits, *, estimated: bool) -> str:
    what = f"would be about {size_text(n_bytes)}" if estimated else f"grew past {size_text(n_bytes)}"
    return (f"the MP3 is too big: it {what}, and the limit per job is {size_text(limits.max_mp3_bytes)} "
            "(MAX_MP3_MB); choose a lower bitrate or cut the video into parts")


def mp3_bytes_at_least(seconds: float, options) -> int | None:
    """The fewest bytes `seconds` of audio can take as MP3 with these options
    (an UploadVideoRequest or ConversionOptions): a lower bound, so that a
    refusal on it is never wrong. LAME lowers a bitrate the output's sample
    rate does not allow (at most 64 kbps at 8-12 kHz, 160 at 16-24 kHz), and
    that rate is the source's, unknown here, unless sample_rate_hz says.
    None for VBR, whose size cannot be told before encoding (the converter
    still counts it)."""
    if options.HasField("vbr_quality"):
        return None
    rate = options.sample_rate_hz or 8000
    most = 64 if rate < 16000 else 160 if rate < 32000 else 320
    return int(seconds * min(options.bitrate_kbps or DEFAULT_BITRATE_KBPS, most) * 1000 / 8)
