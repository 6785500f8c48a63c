"""Limits per job and quotas per user, the pure parts: what a file declares
(formats/durations.py, on files FFmpeg makes), the quota arithmetic and
messages (gateway/quotas.py, domain/limits.py), and the converter's count of
what it decodes and writes (converter/transcode.py)."""
from __future__ import annotations

import datetime as dt
import io

import pytest

from testkit.media import make_media
from video2mp3.converter.transcode import LimitExceeded, transcode
from video2mp3.domain import limits, mp3_options
from video2mp3.domain.limits import JobLimits
from video2mp3.formats import durations
from video2mp3.gateway import quotas
from video2mp3.media.v1 import media_pb2

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def ends(path) -> tuple[bytes, bytes, int]:
    with open(path, "rb") as f:
        data = f.read()
    return data[:64 * 1024], data[-durations.TAIL_BYTES:], len(data)


@pytest.mark.parametrize(("name", "kwargs", "where"), [
    ("fast.mp4", dict(faststart=True), "head"),
    ("a.wav", dict(audio_codec="pcm_s16le", video_codec=None), "head"),
    ("slow.mp4", {}, "file"),
    ("a.m4a", dict(video_codec=None), "file"),
    ("a.ogg", dict(audio_codec="libopus", video_codec=None), "tail"),
    ("v.ogg", dict(audio_codec="vorbis", video_codec=None), "tail"),
])
def test_declared_durations(tmp_path, name, kwargs, where):
    path = make_media(tmp_path / name, duration=7.0, **kwargs)
    head, tail, length = ends(path)
    found = {"head": durations.from_head(head), "tail": durations.from_tail(head, tail)}
    with open(path, "rb") as f:
        found["file"] = durations.mp4_from_file(f, length)
    assert found.pop(where) == pytest.approx(7.0, abs=0.1)
    assert all(v is None or v == pytest.approx(7.0, abs=0.1) for v in found.values())


@pytest.mark.parametrize(("name", "kwargs"), [
    ("a.mkv", {}), ("a.aac", dict(video_codec=None)), ("a.mp3", dict(audio_codec="libmp3lame", video_codec=None)),
])
def test_formats_that_declare_nothing_the_gateway_reads(tmp_path, name, kwargs):
    head, tail, _ = ends(make_media(tmp_path / name, duration=3.0, **kwargs))
    assert durations.from_head(head) is None
    assert durations.from_tail(head, tail) is None


def test_damaged_headers_declare_nothing():
    assert durations.from_head(b"\x00\x00\x00\x20ftypisom" + b"\xff" * 40) is None
    assert durations.from_head(b"RIFF\x00\x00\x00\x00WAVEdata\xff\xff\xff\xff") is None  # streaming WAV
    assert durations.from_tail(b"OggS" + b"\x00" * 60, b"junk") is None


def test_frees_at_is_when_enough_has_left():
    leaving = [(T0 + dt.timedelta(hours=3), 30.0), (T0 + dt.timedelta(hours=1), 20.0),
               (T0 + dt.timedelta(hours=2), 10.0)]
    # 60 used of 50: under the quota once the first 20 leave.
    assert quotas.frees_at(leaving, 60, 50) == T0 + dt.timedelta(hours=1)
    # 25 more need 35 gone: the first two (20 + 10) are not enough, the third is.
    assert quotas.frees_at(leaving, 60, 50, need=25) == T0 + dt.timedelta(hours=3)
    # More than the quota itself: waiting never helps.
    assert quotas.frees_at(leaving, 60, 50, need=51) is None
    # It fits now: nothing to wait for.
    assert quotas.frees_at(leaving, 10, 50, need=5) is None


def test_over_and_no_limit():
    assert quotas.over(50, 50)  # used up: nothing left for another upload
    assert not quotas.over(49, 50)
    assert quotas.over(40, 50, need=11)
    assert not quotas.over(40, 50, need=10)
    assert not quotas.over(10**12, 0, need=10**12)  # 0: no limit


def test_messages_say_used_allowed_and_when():
    text = quotas.minutes_message(50, 0, 60, 20, T0)
    assert "50 s in the last 24 hours of the 1 min allowed" in text
    assert "this upload declares 20 s" in text
    assert "frees up at 2026-12-01 12:00 UTC" in text
    assert "more than the quota allows in a day" in quotas.minutes_message(0, 0, 60, 61, None)
    text = quotas.storage_message(6 * 2**30, 5 * 2**30, 0, None)
    assert "you hold 6.0 GB of your 5.0 GB" in text
    assert "delete jobs" in text
    assert "frees up" not in text


def test_limit_texts_name_the_setting():
    cfg = JobLimits()
    assert cfg.max_audio_s == 3 * 3600
    assert "20 h" in limits.too_long(72000, cfg, declared=True)
    assert "3 h (MAX_AUDIO_DURATION_S)" in limits.too_long(72000, cfg, declared=True)
    assert "(MAX_MP3_MB)" in limits.too_big(500 * 2**20, cfg, estimated=True)
    assert limits.duration_text(5400) == "1 h 30 min"
    assert limits.duration_text(75) == "1 min 15 s"


def test_mp3_size_lower_bound():
    opts = media_pb2.UploadVideoRequest
    # Unknown output rate: the source may be 8 kHz, where MP3 has 64 kbps at most.
    assert limits.mp3_bytes_at_least(100, opts(bitrate_kbps=320)) == 100 * 64 * 125
    assert limits.mp3_bytes_at_least(100, opts(bitrate_kbps=320, sample_rate_hz=44100)) == 100 * 320 * 125
    assert limits.mp3_bytes_at_least(100, opts(sample_rate_hz=22050)) == 100 * 160 * 125
    assert limits.mp3_bytes_at_least(100, opts(vbr_quality=2)) is None


class _NoSeek(io.RawIOBase):
    """A source FFmpeg cannot seek in (as a file still uploading), so nothing is declared."""

    def __init__(self, data: bytes):
        self.f = io.BytesIO(data)

    def readable(self):
        return True

    def seekable(self):
        return False

    def readinto(self, b):
        data = self.f.read(len(b))
        b[:len(data)] = data
        return len(data)

    def tell(self):
        return self.f.tell()

    def seek(self, offset, whence=0):
        return self.f.seek(offset, whence)


class _Sink:
    def __init__(self):
        self.n = 0

    def write(self, data):
        self.n += len(data)


@pytest.fixture(scope="module")
def five_seconds(tmp_path_factory):
    path = make_media(tmp_path_factory.mktemp("lim") / "a.aac", container="adts", video_codec=None, duration=5.0)
    with open(path, "rb") as f:
        return f.read()


def test_converter_fails_a_declared_duration_before_decoding(five_seconds):
    with pytest.raises(LimitExceeded, match=r"declares 5 s.*MAX_AUDIO_DURATION_S") as e:
        transcode(io.BytesIO(five_seconds), _Sink(), media_pb2.ConversionOptions(),
                  limits=JobLimits(max_audio_s=2))
    assert e.value.kind == "audio_duration"


def test_converter_counts_what_it_decodes_when_nothing_is_declared(five_seconds):
    sink = _Sink()
    with pytest.raises(LimitExceeded, match=r"more than 2 s.*MAX_AUDIO_DURATION_S"):
        transcode(_NoSeek(five_seconds), sink, media_pb2.ConversionOptions(), limits=JobLimits(max_audio_s=2))
    assert sink.n < 5 * 192 * 125  # stopped well before the end


class _TinyMp3(JobLimits):
    """MAX_MP3_MB counts MiB; 100 kB here keeps the file small."""

    @property
    def max_mp3_bytes(self) -> int:
        return 100_000


def test_converter_counts_the_mp3_bytes(five_seconds):
    # 5 s at 320 kbps is 200 kB; at 128 kbps, 80 kB.
    with pytest.raises(LimitExceeded, match="MAX_MP3_MB") as e:
        transcode(io.BytesIO(five_seconds), _Sink(), media_pb2.ConversionOptions(bitrate_kbps=320),
                  limits=_TinyMp3())
    assert e.value.kind == "mp3_size"
    result = transcode(io.BytesIO(five_seconds), _Sink(), media_pb2.ConversionOptions(bitrate_kbps=128),
                       limits=_TinyMp3())
    assert result.bytes_written < 100_000


def test_a_trim_counts_only_what_it_keeps():
    """The limits and the minutes quota count the MP3's length: a trim of a
    long source, or an end on a source that declares nothing."""
    trimmed = media_pb2.UploadVideoRequest(start_ms=60_000, end_ms=240_000)
    assert mp3_options.output_seconds(20 * 3600.0, trimmed) == 180.0
    assert mp3_options.output_seconds(None, trimmed) == 180.0
    assert mp3_options.output_seconds(None, media_pb2.UploadVideoRequest()) is None
    assert mp3_options.output_seconds(100.0, media_pb2.UploadVideoRequest(start_ms=30_000)) == 70.0
    assert mp3_options.output_seconds(10.0, media_pb2.UploadVideoRequest(start_ms=30_000)) == 0.0
