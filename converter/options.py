"""ConversionOptions (from the job) turned into concrete MP3 encoder settings."""

from __future__ import annotations

from dataclasses import dataclass

from video2mp3.domain import mp3_options
from video2mp3.domain.mp3_options import DEFAULT_BITRATE_KBPS, DEFAULT_CHANNELS, SAMPLE_RATES_HZ


class InvalidOptions(ValueError):
    """The options cannot be honoured (the gateway should have refused them)."""


@dataclass(frozen=True)
class Mp3Settings:
    sample_rate: int
    channels: int
    bitrate_kbps: int           # CBR bitrate; ignored when vbr_quality is set
    vbr_quality: int | None     # LAME -V 0 (best) .. 9, or None for CBR

    @property
    def vbr(self) -> bool:
        return self.vbr_quality is not None


def nearest_mp3_rate(rate: int) -> int:
    """The MP3 sample rate to resample `rate` to.

    Above 48 kHz the rate of the same family wins (88.2k -> 44.1k, 96k -> 48k),
    which keeps the resampling ratio simple; otherwise the nearest one does.
    """
    if rate in SAMPLE_RATES_HZ:
        return rate
    if rate > 48000:
        return 44100 if rate % 11025 == 0 else 48000
    return min(SAMPLE_RATES_HZ, key=lambda r: abs(r - rate))


def resolve(options, source_rate: int) -> Mp3Settings:
    """Apply defaults: 192 kbps CBR, stereo, the source's (nearest MP3) rate.
    The rules are the gateway's (domain/mp3_options.py)."""
    wrong = mp3_options.violations(options)
    if wrong:
        raise InvalidOptions("; ".join(d for _, d in wrong))
    vbr = options.vbr_quality if options.HasField("vbr_quality") else None
    bitrate = options.bitrate_kbps or DEFAULT_BITRATE_KBPS
    channels = options.channels or DEFAULT_CHANNELS
    rate = options.sample_rate_hz or nearest_mp3_rate(source_rate)
    return Mp3Settings(sample_rate=rate, channels=channels, bitrate_kbps=bitrate, vbr_quality=vbr)


def asks_for_change(options, rate: int, channels: int, bitrate_kbps: int) -> bool:
    """Whether an option differs from an MP3 source, so it must be re-encoded.

    Unset options (the defaults) never do: an MP3 upload keeps its own rate,
    channels and bitrate rather than being re-encoded to 192 kbps stereo.
    A trim or a loudness target always does.
    """
    return (
        options.HasField("vbr_quality")
        or mp3_options.trims(options)
        or options.HasField("loudness_lufs")
        or options.bitrate_kbps not in (0, bitrate_kbps)
        or options.channels not in (0, channels)
        or options.sample_rate_hz not in (0, rate)
    )
