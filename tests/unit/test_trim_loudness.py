"""Trim (start_ms, end_ms) and loudness normalisation (loudness_lufs), checked
from outside: the MP3 is decoded by FFmpeg (PyAV), which removes the encoder
delay and padding its info frame gives, and measured by the ffmpeg command
line's `ebur128` filter, as a listener's tools would.
"""

from __future__ import annotations

import numpy as np
import pytest

from testkit.media import ReadSeekOnly, decode_audio, ebur128, make_media, make_noise
from video2mp3.converter import loudness, trim
from video2mp3.converter.transcode import ConversionError, TranscodeResult, transcode
from video2mp3.domain import mp3_options
from video2mp3.media.v1 import media_pb2

LOUDNESS_TOLERANCE_LU = 1.0   # the promise
# ffmpeg's summary prints the true peak to 0.1 dB: -1.0 may be up to -0.95.
TRUE_PEAK_TOLERANCE_DB = 0.05


class Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data) -> None:
        self.chunks.append(bytes(data))


def convert(path, **options) -> tuple[TranscodeResult, bytes]:
    kw = {k: options.pop(k) for k in ("encoders", "encoder", "overlap", "on_progress") if k in options}
    sink, src = Sink(), ReadSeekOnly(path)
    try:
        result = transcode(src, sink, media_pb2.ConversionOptions(**options), filename="x", **kw)  # type: ignore[arg-type]
    finally:
        src.close()
    data = bytearray(b"".join(sink.chunks))
    assert result.header_patch is not None
    offset, patch = result.header_patch
    data[offset:offset + len(patch)] = patch
    return result, bytes(data)


def best_lag(reference: np.ndarray, signal: np.ndarray, span: int = 600) -> int:
    core = reference[2 * span:2 * span + 20_000]
    errors = [np.mean((signal[2 * span + lag:2 * span + lag + len(core)] - core) ** 2)
              for lag in range(-span, span + 1)]
    return int(np.argmin(errors)) - span


# --- Trim ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wav44(tmp_path_factory):
    return make_noise(tmp_path_factory.mktemp("trim") / "n.wav", 12.0, rate=44100, codec="pcm_s16le")


@pytest.mark.parametrize(("start_ms", "end_ms"), [(0, 1000), (1234, 5678), (1, 2), (2500, 11999)])
@pytest.mark.parametrize("extra", [{}, {"vbr_quality": 2}, {"encoder": "lameenc"}])
def test_trimmed_length_is_exact(wav44, start_ms, end_ms, extra):
    result, data = convert(wav44, start_ms=start_ms, end_ms=end_ms, **extra)
    decoded, rate, _ = decode_audio(data)
    assert rate == 44100
    assert len(decoded) == ((end_ms - start_ms) * rate + 500) // 1000
    assert result.duration_seconds == len(decoded) / rate


def test_trimmed_length_at_another_rate(wav44):
    _, data = convert(wav44, start_ms=333, end_ms=7777, sample_rate_hz=22050, channels=1)
    decoded, rate, channels = decode_audio(data)
    assert (rate, channels) == (22050, 1)
    assert len(decoded) == ((7777 - 333) * 22050 + 500) // 1000


def test_trim_is_in_step_with_the_source(wav44):
    """Not just the length: the MP3 is the source's samples from start_ms on."""
    reference, _rate, _ = decode_audio(wav44)
    _, data = convert(wav44, start_ms=2000, end_ms=6000)
    decoded, _, _ = decode_audio(data)
    assert best_lag(reference[2000 * 44100 // 1000:], decoded) == 0


def test_start_only_and_end_only(wav44):
    whole = len(decode_audio(wav44)[0])
    _, data = convert(wav44, start_ms=10_000)
    assert len(decode_audio(data)[0]) == whole - 441_000
    _, data = convert(wav44, end_ms=3000)
    assert len(decode_audio(data)[0]) == 3 * 44100


def test_end_past_the_audio_ends_with_it(wav44):
    whole = len(decode_audio(wav44)[0])
    _result, data = convert(wav44, start_ms=11_000, end_ms=60_000)
    assert len(decode_audio(data)[0]) == whole - 11 * 44100


def test_start_past_the_audio_fails(wav44):
    with pytest.raises(ConversionError, match="start_ms is past the end of the audio"):
        convert(wav44, start_ms=13_000, end_ms=14_000)


@pytest.fixture(scope="module")
def long_sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("seek")
    return {name: make_noise(d / name, 45.0, codec=codec)
            for name, codec in (("long.m4a", "aac"), ("long.wav", "pcm_s16le"), ("long.flac", "flac"),
                                ("long.mkv", "aac"))}


@pytest.mark.parametrize(("name", "seeks"), [("long.m4a", True), ("long.wav", True), ("long.flac", True),
                                             ("long.mkv", False)])
@pytest.mark.parametrize("allowed", [True, False])
def test_seek_lands_on_the_same_samples(long_sources, monkeypatch, name, seeks, allowed):
    """A start far in is seeked to (MP4, WAV, FLAC: exact timestamps), or
    decoded to (Matroska's are whole milliseconds; or seeking is turned off
    here): either way the MP3 is the same samples of the source, in step, of
    the exact length."""
    made: list[trim.Frames] = []

    class Spy(trim.Frames):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(trim, "Frames", Spy)
    if not allowed:
        monkeypatch.setattr(trim, "SEEK_AFTER_S", 1e9)
    path = long_sources[name]
    reference, rate, _ = decode_audio(path)
    _, data = convert(path, start_ms=36_000, end_ms=41_500)
    decoded, _, _ = decode_audio(data)
    assert len(decoded) == 5.5 * rate
    assert best_lag(reference[36 * rate:], decoded) == 0
    assert [f.seeked for f in made] == [seeks and allowed]


def test_trim_with_two_encoders(tmp_path):
    """The split encoder joins segments of a trimmed track as of a whole one."""
    path = make_noise(tmp_path / "n.m4a", 62.0, rate=24000)
    result, data = convert(path, start_ms=1000, end_ms=61_003, encoders=2)
    assert result.encoder_joins >= 1
    assert len(decode_audio(data)[0]) == 60 * 24000 + 72


def test_trimmed_mp3_source_is_reencoded(tmp_path):
    source = make_media(tmp_path / "a.mp3", video_codec=None, audio_codec="libmp3lame", duration=4.0)
    result, data = convert(source, start_ms=500, end_ms=2500)
    assert not result.copied
    assert len(decode_audio(data)[0]) == 2 * 48000


# --- Loudness -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def loud(tmp_path_factory):
    return make_noise(tmp_path_factory.mktemp("loud") / "loud.m4a", 20.0, level=0.25)


@pytest.fixture(scope="module")
def quiet_peaky(tmp_path_factory):
    return make_noise(tmp_path_factory.mktemp("loud") / "peaky.m4a", 20.0, level=0.01, bursts=True)


@pytest.mark.parametrize("target", [-16.0, -14.0])
@pytest.mark.parametrize("source", ["loud", "quiet_peaky"])
def test_loudness_target_as_ebur128_measures_it(request, source, target):
    before, _ = ebur128(request.getfixturevalue(source))
    assert abs(before - target) > 3  # the test means something
    _, data = convert(request.getfixturevalue(source), loudness_lufs=target)
    integrated, peak = ebur128(data)
    assert abs(integrated - target) <= LOUDNESS_TOLERANCE_LU
    assert peak <= loudness.TRUE_PEAK_CEILING_DBTP + TRUE_PEAK_TOLERANCE_DB


@pytest.mark.parametrize("encoder", ["system", "lameenc"])  # float planes, 16-bit interleaved
def test_loudness_with_a_trim(loud, encoder):
    _, data = convert(loud, loudness_lufs=-23, start_ms=2000, end_ms=9000, encoder=encoder)
    assert len(decode_audio(data)[0]) == 7 * 48000
    integrated, _ = ebur128(data)
    assert abs(integrated + 23) <= LOUDNESS_TOLERANCE_LU


def test_silence_stays_silent(tmp_path):
    path = make_noise(tmp_path / "s.m4a", 3.0, level=0.0)
    _, data = convert(path, loudness_lufs=-16)
    decoded, _, _ = decode_audio(data)
    assert len(decoded) == len(decode_audio(path)[0])
    assert np.max(np.abs(decoded)) < 1e-3


def test_loudness_progress_goes_through_both_passes(loud):
    seen: list[float] = []
    convert(loud, loudness_lufs=-16, on_progress=seen.append)
    assert seen == sorted(seen)
    assert seen[-1] == 1.0
    assert any(0 < f <= 0.3 for f in seen)


def test_plan():
    assert loudness.plan(loudness.Measurement(-20.0, 0.1, 0.1), -16) == loudness.Plan(4.0)
    assert loudness.plan(loudness.Measurement(-30.0, 0.5, 0.5), -16) == loudness.Plan(14.0, -2.0)
    # 3 dB between true and sample peaks: the limit is that much lower
    assert loudness.plan(loudness.Measurement(-30.0, 0.5, 0.5 / 10 ** (3 / 20)), -16).limit_dbfs == \
        pytest.approx(-4.7)
    assert loudness.plan(loudness.Measurement(float("-inf"), 0.0), -16) == loudness.Plan(0.0)


# --- Validation -----------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "field"), [
    ({"start_ms": -1}, "start_ms"),
    ({"end_ms": -5}, "end_ms"),
    ({"start_ms": 5000, "end_ms": 5000}, "end_ms"),
    ({"start_ms": 5000, "end_ms": 4000}, "end_ms"),
    ({"end_ms": 0}, "end_ms"),
    ({"loudness_lufs": -71}, "loudness_lufs"),
    ({"loudness_lufs": 0}, "loudness_lufs"),
    ({"loudness_lufs": float("nan")}, "loudness_lufs"),
])
def test_violations(fields, field):
    found = mp3_options.violations(media_pb2.UploadVideoRequest(**fields))
    assert [f for f, _ in found] == [field]


@pytest.mark.parametrize("fields", [{"start_ms": 0}, {"start_ms": 1, "end_ms": 2}, {"end_ms": 1},
                                    {"loudness_lufs": -70}, {"loudness_lufs": -5}, {"loudness_lufs": -14.5}])
def test_allowed(fields):
    assert mp3_options.violations(media_pb2.ConversionOptions(**fields)) == []


def test_defaults_carry_trim_and_loudness():
    out = mp3_options.with_defaults(media_pb2.UploadVideoRequest(start_ms=10, end_ms=20, loudness_lufs=-16))
    assert (out.start_ms, out.end_ms, out.loudness_lufs) == (10, 20, -16)
    out = mp3_options.with_defaults(media_pb2.UploadVideoRequest(start_ms=0))
    assert not out.HasField("start_ms")
    assert not out.HasField("end_ms")
    assert not out.HasField("loudness_lufs")

