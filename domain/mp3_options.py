"""What each conversion option allows: the one definition, used by the
gateway to refuse bad uploads (gateway/validation.py) and by the converter to
resolve a job's options (converter/options.py).

It lives in domain/ because both sides read the same message fields
(UploadVideoRequest and ConversionOptions share them) and the gateway should
not import the converter, which brings PyAV. Zero / unset values mean the
default.
"""
from __future__ import annotations

from video2mp3.media.v1 import media_pb2

# The bitrates of an MPEG-1 Layer III stream. LAME picks MPEG-2 for rates up to
# 24 kHz and then rounds to the nearest bitrate that layer allows.
BITRATES_KBPS = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
SAMPLE_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
VBR_QUALITIES = range(10)  # LAME -V: 0 best .. 9 smallest
CHANNELS = (1, 2)
DEFAULT_BITRATE_KBPS = 192
DEFAULT_CHANNELS = 2
# Loudness targets (LUFS) accepted: -70 is where BS.1770's absolute gate
# stops counting audio at all; above -5 nothing but a brick wall gets there.
LOUDNESS_LUFS_RANGE = (-70.0, -5.0)
# Trim points past this are no audio anyone uploads (about 11.5 days).
MAX_TRIM_MS = 1_000_000_000


def violations(options) -> list[tuple[str, str]]:
    """(field, description) for each option that is not allowed; empty if all are.

    `options`: an UploadVideoRequest or a ConversionOptions. cover_art and
    split_chapters are booleans, valid either way (a malformed text form is
    refused where it is parsed: Envoy's query binding, gateway/tus.py)."""
    found = []
    if options.HasField("vbr_quality"):
        if options.bitrate_kbps:
            found.append(("vbr_quality",
                          "give either bitrate_kbps (CBR) or vbr_quality (VBR), not both"))
        elif options.vbr_quality not in VBR_QUALITIES:
            found.append(("vbr_quality",
                          f"vbr_quality must be 0 (best) to 9, got {options.vbr_quality}"))
    elif options.bitrate_kbps and options.bitrate_kbps not in BITRATES_KBPS:
        found.append(("bitrate_kbps", (f"bitrate_kbps must be one of "
                      f"{', '.join(map(str, BITRATES_KBPS))}, got {options.bitrate_kbps}")))
    if options.channels and options.channels not in CHANNELS:
        found.append(("channels", f"channels must be 1 (mono) or 2 (stereo), got {options.channels}"))
    if options.sample_rate_hz and options.sample_rate_hz not in SAMPLE_RATES_HZ:
        found.append(("sample_rate_hz", (f"sample_rate_hz must be one MP3 allows "
                      f"({', '.join(map(str, SAMPLE_RATES_HZ))}), got {options.sample_rate_hz}")))
    if options.HasField("audio_track") and options.audio_track < 0:
        found.append(("audio_track", f"audio_track must be 0 or more, got {options.audio_track}"))
    found += _trim_violations(options)
    if options.HasField("loudness_lufs"):
        low, high = LOUDNESS_LUFS_RANGE
        if not low <= options.loudness_lufs <= high:  # NaN fails too
            found.append(("loudness_lufs", f"loudness_lufs must be {low:g} to {high:g} (LUFS, e.g. -16 "
                                           f"or -14), got {options.loudness_lufs:g}"))
    return found


def _trim_violations(options) -> list[tuple[str, str]]:
    found = []
    start = options.start_ms if options.HasField("start_ms") else 0
    for name in ("start_ms", "end_ms"):
        if options.HasField(name) and not 0 <= getattr(options, name) <= MAX_TRIM_MS:
            found.append((name, f"{name} must be 0 to {MAX_TRIM_MS} (milliseconds), got {getattr(options, name)}"))
    if not found and options.HasField("end_ms") and options.end_ms <= start:
        found.append(("end_ms", f"end_ms must be after start_ms ({start}), got {options.end_ms}"))
    return found


def trims(options) -> bool:
    """Whether the options ask for part of the audio only."""
    return options.start_ms > 0 or options.HasField("end_ms")


def with_defaults(options) -> media_pb2.ConversionOptions:
    """Valid `options` with the defaults filled in: 192 kbps CBR unless VBR
    is asked for, stereo; the sample rate stays 0 (the source's); the trim
    and loudness target as given (unset: none)."""
    into = media_pb2.ConversionOptions()
    if options.HasField("vbr_quality"):
        into.vbr_quality = options.vbr_quality
    else:
        into.bitrate_kbps = options.bitrate_kbps or DEFAULT_BITRATE_KBPS
    into.channels = options.channels or DEFAULT_CHANNELS
    into.sample_rate_hz = options.sample_rate_hz
    for name in ("audio_track", "start_ms", "end_ms", "loudness_lufs"):
        if options.HasField(name):
            setattr(into, name, getattr(options, name))
    if into.HasField("start_ms") and into.start_ms == 0:
        into.ClearField("start_ms")  # 0 is the default: the job records no trim
    into.cover_art = options.cover_art
    into.split_chapters = options.split_chapters
    return into


def output_seconds(declared: float | None, options) -> float | None:
    """How long the MP3 will be, given the seconds of audio the source
    declares (None: unknown): a trim only shortens it, and with an end_ms
    it is bounded even when the source declares nothing. The limits per job
    and the minutes quota count this, not the source's length."""
    start = options.start_ms / 1000 if options.HasField("start_ms") else 0.0
    end = options.end_ms / 1000 if options.HasField("end_ms") else None
    if declared is None:
        return None if end is None else end - start
    return max(0.0, (declared if end is None else min(declared, end)) - start)
