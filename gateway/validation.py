"""Checks the upload's conversion options and turns them into the
ConversionOptions the job carries. Errors name the offending field."""
from __future__ import annotations

from video2mp3.media.v1 import media_pb2

# Every bitrate an MPEG-1/2 Layer III stream can have (LAME picks the layer version
# from the sample rate; it rounds to the nearest legal one for the other layer).
MP3_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
DEFAULT_BITRATE = 192
DEFAULT_CHANNELS = 2
MAX_FILENAME_CHARS = 255


class InvalidOptions(ValueError):
    pass


def conversion_options(req: media_pb2.UploadVideoRequest) -> media_pb2.ConversionOptions:
    opts = media_pb2.ConversionOptions(
        bitrate_kbps=req.bitrate_kbps or DEFAULT_BITRATE,
        channels=req.channels or DEFAULT_CHANNELS,
        sample_rate_hz=req.sample_rate_hz,
    )
    if req.HasField("vbr_quality"):
        if req.bitrate_kbps:
            raise InvalidOptions("give either bitrate_kbps (CBR) or vbr_quality (VBR), not both")
        if not 0 <= req.vbr_quality <= 9:
            raise InvalidOptions(f"vbr_quality must be 0 (best) to 9, got {req.vbr_quality}")
        opts.vbr_quality = req.vbr_quality
        opts.bitrate_kbps = 0
    elif opts.bitrate_kbps not in MP3_BITRATES:
        raise InvalidOptions(
            f"bitrate_kbps must be one of {', '.join(map(str, MP3_BITRATES))}, got {req.bitrate_kbps}")
    if opts.channels not in (1, 2):
        raise InvalidOptions(f"channels must be 1 (mono) or 2 (stereo), got {req.channels}")
    if req.sample_rate_hz and req.sample_rate_hz not in MP3_SAMPLE_RATES:
        raise InvalidOptions(
            f"sample_rate_hz must be one MP3 allows ({', '.join(map(str, MP3_SAMPLE_RATES))}), "
            f"got {req.sample_rate_hz}")
    if req.HasField("audio_track"):
        if req.audio_track < 0:
            raise InvalidOptions(f"audio_track must be 0 or more, got {req.audio_track}")
        opts.audio_track = req.audio_track
    return opts


def filename(raw: str) -> str:
    name = raw.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if len(name) > MAX_FILENAME_CHARS:
        raise InvalidOptions(f"filename must be at most {MAX_FILENAME_CHARS} characters")
    if any(ord(ch) < 32 for ch in name):
        raise InvalidOptions("filename must not contain control characters")
    return name or "upload"
