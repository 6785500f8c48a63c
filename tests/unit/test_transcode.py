"""converter.transcode on real files, all generated here with PyAV.

Each conversion writes into a write-only sink (like a GridFS upload stream),
the returned header patch is applied as the worker applies it to GridFS, and
the MP3 is then checked the way a player would see it: decoded by FFmpeg
(which honours the LAME tag's delay/padding), its tone, length, rate and
channels, its ID3 tag, and the info frame's fields read byte by byte.
"""

from __future__ import annotations

import io
import os
import struct
import threading
from pathlib import Path

import av
import numpy as np
import pytest

# Like a GridOut: read/seek/tell only, what transcode's docstring asks for;
# its Source type (BinaryIO | RawIOBase) is narrower, hence arg-type ignored.
from testkit.media import ReadSeekOnly as Source
from testkit.media import (
    analyse_mp3,
    audio_duration,
    decode_audio,
    make_media,
    make_text_file,
    make_truncated,
)
from video2mp3.converter import info_frame, lame
from video2mp3.converter import options as opts
from video2mp3.converter.id3 import id3v2_size
from video2mp3.converter.transcode import ConversionError, TranscodeResult, transcode
from video2mp3.formats import mpeg_audio
from video2mp3.media.v1 import media_pb2

DURATION_TOLERANCE_S = 0.05
FREQ_TOLERANCE_HZ = 5.0


# --- Helpers ------------------------------------------------------------------

class Sink:
    """Write-only and not seekable, like a GridFS upload stream."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data) -> None:
        assert isinstance(data, (bytes, bytearray)), type(data)
        self.chunks.append(bytes(data))

    def stored(self, patch) -> bytes:
        """The file as stored once the header patch is applied in place."""
        data = bytearray(b"".join(self.chunks))
        if patch is not None:
            offset, new = patch
            assert offset + len(new) <= len(data)
            data[offset:offset + len(new)] = new
        return bytes(data)


def options(**kw) -> media_pb2.ConversionOptions:
    return media_pb2.ConversionOptions(**kw)


def convert(path, opts_=None, filename=None, **kw) -> tuple[TranscodeResult, bytes]:
    sink, src = Sink(), Source(path)
    try:
        result = transcode(src, sink, opts_ or options(),  # type: ignore[arg-type]  # Source: see its import
                           filename=filename if filename is not None else os.path.basename(path), **kw)
    finally:
        src.close()
    data = sink.stored(result.header_patch)
    assert result.bytes_written == len(data)
    return result, data


def split_mp3(data: bytes) -> tuple[int, bytes, bytes]:
    """(ID3v2 length, info frame, audio frames)."""
    id3 = id3v2_size(data)
    header = mpeg_audio.parse_header(data[id3:id3 + 4])
    assert header is not None, "no MP3 frame after the ID3 tag"
    end = id3 + header.length
    return id3, data[id3:end], data[end:]


def count_frames(audio: bytes) -> tuple[int, int]:
    """(frames, samples per frame) of back-to-back MP3 frames, strictly."""
    pos = frames = 0
    spf = 0
    while pos < len(audio):
        header = mpeg_audio.parse_header(audio[pos:pos + 4])
        assert header is not None, f"junk at byte {pos} of the audio"
        pos += header.length
        frames += 1
        spf = header.samples_per_frame
    assert pos == len(audio), "the last frame is cut short"
    return frames, spf


def crc16_bitwise(data: bytes) -> int:
    """CRC-16/ARC the slow, obvious way (an independent check of the tag's CRCs)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def read_info_frame(frame: bytes) -> dict:
    header = mpeg_audio.parse_header(frame)
    assert header is not None
    at = 4 + header.side_info_size
    kind = frame[at:at + 4]
    flags, frames, size = struct.unpack(">III", frame[at + 4:at + 16])
    toc = frame[at + 16:at + 116]
    lame_at = at + 120
    tag = frame[lame_at:lame_at + 36]
    delay_padding = int.from_bytes(tag[21:24], "big")
    return {
        "kind": kind, "flags": flags, "frames": frames, "bytes": size, "toc": toc,
        "encoder": tag[:9], "delay": delay_padding >> 12, "padding": delay_padding & 0xFFF,
        "bitrate": tag[20], "music_length": struct.unpack(">I", tag[28:32])[0],
        "music_crc": struct.unpack(">H", tag[32:34])[0],
        "tag_crc": struct.unpack(">H", tag[34:36])[0],
        "tag_crc_expected": crc16_bitwise(frame[:lame_at + 34]),
    }


def id3_tags(data: bytes) -> dict[str, str]:
    """The tags FFmpeg's own ID3v2 reader finds."""
    with av.open(io.BytesIO(data)) as c:
        return dict(c.metadata)


def check_mp3(data: bytes, *, duration: float, freq: float = 440.0, rate: int | None = None,
              channels: int = 2, title: str | None = None) -> dict:
    """Everything a good output has; returns the parsed info frame."""
    got_duration, got_freq, got_rate, got_channels = analyse_mp3(data)
    assert abs(got_duration - duration) <= DURATION_TOLERANCE_S, (got_duration, duration)
    assert abs(got_freq - freq) <= FREQ_TOLERANCE_HZ, got_freq
    if rate is not None:
        assert got_rate == rate
    assert got_channels == channels
    if title is not None:
        assert id3_tags(data).get("title") == title

    _id3, frame, audio = split_mp3(data)
    info = read_info_frame(frame)
    frames, spf = count_frames(audio)
    assert info["kind"] in (b"Info", b"Xing")
    assert info["flags"] == 0x0F
    assert info["frames"] == frames
    assert info["bytes"] == len(frame) + len(audio) == info["music_length"]
    assert info["encoder"][:4] in (b"LAME", b"Lavf", b"Lavc")  # those FFmpeg trusts for gapless
    assert info["tag_crc"] == info["tag_crc_expected"]
    assert info["music_crc"] == crc16_bitwise(audio)
    toc = list(info["toc"])
    assert toc[0] == 0
    assert toc == sorted(toc)
    # Gapless: what the tag tells a player to keep is exactly what decodes.
    played = frames * spf - info["delay"] - max(info["padding"], info_frame.DECODER_DELAY)
    assert played == round(got_duration * got_rate)
    return info


# --- Containers and codecs ------------------------------------------------------

# (file name, make_media arguments): every container and codec FFmpeg in the
# PyAV wheel can write. 2 s of 440 Hz, 48 kHz stereo unless said otherwise.
CONTAINERS = [
    ("h264_aac.mp4", dict(video_codec="h264")),
    ("mpeg4_aac.mp4", dict(video_codec="mpeg4")),
    ("eac3.mp4", dict(audio_codec="eac3")),
    ("opus.mp4", dict(audio_codec="libopus")),
    ("flac.mp4", dict(audio_codec="flac")),
    ("aac.mov", dict()),
    ("alac.mov", dict(audio_codec="alac")),
    ("pcm_s16.mov", dict(audio_codec="pcm_s16le")),
    ("pcm_s24.mov", dict(audio_codec="pcm_s24le")),
    ("vorbis.mkv", dict(audio_codec="vorbis")),
    ("opus.mkv", dict(audio_codec="libopus")),
    ("flac.mkv", dict(audio_codec="flac")),
    ("ac3.mkv", dict(audio_codec="ac3")),
    ("pcm_f32.mkv", dict(audio_codec="pcm_f32le")),
    ("vp8_opus.webm", dict(audio_codec="libopus")),
    ("vp8_vorbis.webm", dict(audio_codec="vorbis")),
    ("mpeg4_ac3.avi", dict(audio_codec="ac3")),
    ("mpeg4_pcm.avi", dict(audio_codec="pcm_s16le")),
    ("flv_aac.flv", dict(sample_rate=44100)),
    ("h264_aac.ts", dict()),
    ("h264_ac3.ts", dict(audio_codec="ac3")),
    ("h264_eac3.ts", dict(audio_codec="eac3")),
    ("vp8_vorbis.ogv", dict(audio_codec="vorbis")),
    ("aac.3gp", dict(sample_rate=16000, layout="mono")),
    ("amr.3gp", dict(audio_codec="amr_nb", sample_rate=8000, layout="mono")),
    ("wmv2_wmav2.wmv", dict(audio_codec="wmav2")),
    ("aac.m4a", dict(video_codec=None)),
    ("alac.m4a", dict(video_codec=None, audio_codec="alac")),
    ("s16.wav", dict(video_codec=None, audio_codec="pcm_s16le")),
    ("s24.wav", dict(video_codec=None, audio_codec="pcm_s24le")),
    ("f32.wav", dict(video_codec=None, audio_codec="pcm_f32le")),
    ("audio.flac", dict(video_codec=None, audio_codec="flac")),
    ("vorbis.ogg", dict(video_codec=None, audio_codec="vorbis")),
    ("opus.ogg", dict(video_codec=None, audio_codec="libopus")),
    ("wma.wma", dict(video_codec=None, audio_codec="wmav2")),
    ("mp2.mkv", dict(audio_codec="mp2")),
]


@pytest.mark.parametrize(("name", "kw"), CONTAINERS, ids=[c[0] for c in CONTAINERS])
def test_converts_container_and_codec(tmp_path, name, kw):
    path = make_media(tmp_path / name, duration=2.0, **kw)
    result, data = convert(path)
    assert not result.copied
    check_mp3(data, duration=audio_duration(path), rate=kw.get("sample_rate", 48000),
              channels=2, title=os.path.splitext(name)[0])
    assert abs(result.duration_seconds - audio_duration(path)) <= DURATION_TOLERANCE_S
    assert result.channels == 2  # mono sources too: stereo is the default


# --- Layouts, rates, tracks, timestamps -----------------------------------------

@pytest.mark.parametrize(("layout", "codec"), [("mono", "aac"), ("stereo", "aac"), ("5.1", "aac"),
                                          ("5.1", "ac3"), ("5.1", "eac3"), ("5.1", "flac")])
def test_layouts_become_stereo(tmp_path, layout, codec):
    path = make_media(tmp_path / f"{layout}.mkv", audio_codec=codec, layout=layout, duration=1.5)
    _result, data = convert(path)
    check_mp3(data, duration=audio_duration(path), rate=48000, channels=2)
    # 5.1 is mixed down, not cut to its front pair: the tone is still loud.
    samples, _, _ = decode_audio(data)
    assert np.sqrt(np.mean(samples ** 2)) > 0.1


def test_mono_option(tmp_path):
    path = make_media(tmp_path / "surround.mp4", audio_codec="ac3", layout="5.1", duration=1.5)
    result, data = convert(path, options(channels=1))
    assert result.channels == 1
    check_mp3(data, duration=audio_duration(path), channels=1)
    header = mpeg_audio.parse_header(split_mp3(data)[2])
    assert header is not None
    assert header.channel_mode == 3


# Source rate -> the rate the MP3 gets by default.
RATES = [(8000, 8000), (11025, 11025), (12000, 12000), (16000, 16000), (22050, 22050),
         (24000, 24000), (32000, 32000), (44100, 44100), (48000, 48000),
         (64000, 48000), (88200, 44100), (96000, 48000)]


@pytest.mark.parametrize(("source_rate", "mp3_rate"), RATES, ids=[str(r[0]) for r in RATES])
def test_sample_rates(tmp_path, source_rate, mp3_rate):
    path = make_media(tmp_path / f"r{source_rate}.flac", video_codec=None, audio_codec="flac",
                      sample_rate=source_rate, duration=1.5)
    result, data = convert(path)
    assert result.sample_rate == mp3_rate
    check_mp3(data, duration=audio_duration(path), rate=mp3_rate)


def test_sample_rate_option(tmp_path):
    path = make_media(tmp_path / "clip.mp4", duration=1.5)
    _, data = convert(path, options(sample_rate_hz=22050))
    check_mp3(data, duration=audio_duration(path), rate=22050)
    header = mpeg_audio.parse_header(split_mp3(data)[2])
    assert header is not None
    assert header.sample_rate == 22050


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_several_audio_tracks(tmp_path, container):
    path = make_media(tmp_path / f"tracks.{container}", n_audio_tracks=3,
                      track_freqs=[440.0, 660.0, 880.0], default_track=1, duration=1.5)
    # No option: the track flagged default, not simply the first.
    _, data = convert(path)
    check_mp3(data, duration=audio_duration(path, 1), freq=660.0)
    for track, freq in [(0, 440.0), (2, 880.0)]:
        _, data = convert(path, options(audio_track=track))
        check_mp3(data, duration=audio_duration(path, track), freq=freq)


def test_first_track_when_none_is_default(tmp_path):
    path = make_media(tmp_path / "tracks.avi", audio_codec="pcm_s16le", n_audio_tracks=2,
                      track_freqs=[550.0, 880.0], duration=1.5)
    with av.open(path) as c:
        assert not any(s.disposition & av.stream.Disposition.default for s in c.streams.audio)
    _, data = convert(path)
    check_mp3(data, duration=audio_duration(path), freq=550.0)


def test_missing_audio_track(tmp_path):
    path = make_media(tmp_path / "one.mp4", duration=1.0)
    with pytest.raises(ConversionError, match="audio track 3 does not exist"):
        convert(path, options(audio_track=3))


@pytest.mark.parametrize("name", ["late.mp4", "late.mkv", "late.ts", "late.flv"])
def test_timestamps_not_starting_at_zero(tmp_path, name):
    path = make_media(tmp_path / name, start_pts=7.5, duration=2.0,
                      sample_rate=44100 if name.endswith("flv") else 48000)
    with av.open(path) as c:
        audio = c.streams.audio[0]
        assert audio.start_time is not None
        assert audio.time_base is not None
        assert audio.start_time * audio.time_base > 1
    result, data = convert(path)
    check_mp3(data, duration=audio_duration(path))
    assert result.duration_seconds < 2.1  # the offset is not turned into silence


@pytest.mark.parametrize("faststart", [False, True], ids=["moov_at_end", "moov_first"])
def test_moov_position(tmp_path, faststart):
    path = make_media(tmp_path / "clip.mp4", faststart=faststart, duration=2.0)
    head = Path(path).read_bytes()[:64]
    assert (b"moov" in head) == faststart
    _, data = convert(path)
    check_mp3(data, duration=audio_duration(path))


def best_lag(reference: np.ndarray, signal: np.ndarray, span: int = 1500) -> int:
    """The shift of `signal` against `reference` that matches it best."""
    core = reference[2 * span: 2 * span + 20_000]
    errors = [np.mean((signal[2 * span + lag: 2 * span + lag + len(core)] - core) ** 2)
              for lag in range(-span, span + 1)]
    return int(np.argmin(errors)) - span


@pytest.mark.parametrize("backend", ["system", "lameenc"])
def test_gapless_alignment(tmp_path, backend):
    """The LAME tag's delay trims exactly LAME's priming: the MP3 decodes in
    step with the source, sample for sample, not just to the same length."""
    path = make_media(tmp_path / "tone.wav", video_codec=None, audio_codec="pcm_s16le",
                      freq=441.3, duration=1.0)  # not a whole number of samples per period
    reference, rate, _ = decode_audio(path)
    _, data = convert(path, encoder=backend)
    decoded, got_rate, _ = decode_audio(data)
    assert got_rate == rate
    assert len(decoded) == len(reference)
    assert best_lag(reference, decoded) == 0


def test_copied_mp3_decodes_like_the_source(tmp_path):
    path = make_media(tmp_path / "song.mp3", video_codec=None, audio_codec="mp3",
                      sample_rate=44100, freq=441.3, duration=1.5)
    result, data = convert(path)
    assert result.copied
    reference, _, _ = decode_audio(path)
    decoded, _, _ = decode_audio(data)
    np.testing.assert_array_equal(decoded, reference)


# --- Options ---------------------------------------------------------------------

@pytest.mark.parametrize("kbps", [32, 128, 192, 320])
def test_cbr_bitrate(clip, kbps):
    _, data = convert(clip, options(bitrate_kbps=kbps))
    info = check_mp3(data, duration=audio_duration(clip))
    assert info["kind"] == b"Info"
    assert info["bitrate"] == min(kbps, 255)
    _, frame, audio = split_mp3(data)
    rates = set()
    pos = 0
    while pos < len(audio):
        header = mpeg_audio.parse_header(audio[pos:pos + 4])
        assert header is not None
        rates.add(header.bitrate_kbps)
        pos += header.length
    assert rates == {kbps}
    info_header = mpeg_audio.parse_header(frame)
    assert info_header is not None
    assert info_header.bitrate_kbps >= kbps  # CBR info frame: same size where it fits


def test_default_is_192_kbps_stereo_at_source_rate(clip):
    result, data = convert(clip)
    info = check_mp3(data, duration=audio_duration(clip), rate=48000, channels=2)
    assert info["kind"] == b"Info"
    assert info["bitrate"] == 192
    assert (result.sample_rate, result.channels) == (48000, 2)


@pytest.mark.parametrize("quality", [0, 4, 9])
def test_vbr_quality(clip, quality):
    _, data = convert(clip, options(vbr_quality=quality))
    info = check_mp3(data, duration=audio_duration(clip), rate=48000)
    assert info["kind"] == b"Xing"
    assert len(data) < 2.2 * 192_000 / 8  # nowhere near 320 kbps for a sine


def test_vbr_quality_orders_size(clip):
    sizes = [len(convert(clip, options(vbr_quality=q))[1]) for q in (0, 9)]
    assert sizes[0] > sizes[1]


@pytest.mark.parametrize("bad", [dict(bitrate_kbps=16), dict(bitrate_kbps=1000),
                                 dict(vbr_quality=10), dict(channels=6),
                                 dict(sample_rate_hz=12345)])
def test_invalid_options(clip, bad):
    with pytest.raises(ConversionError):
        convert(clip, options(**bad))


def test_options_resolution():
    assert opts.nearest_mp3_rate(96000) == 48000
    assert opts.nearest_mp3_rate(88200) == 44100
    assert opts.nearest_mp3_rate(176400) == 44100
    assert opts.nearest_mp3_rate(7350) == 8000
    assert opts.nearest_mp3_rate(37800) == 32000
    s = opts.resolve(options(), 96000)
    assert (s.sample_rate, s.channels, s.bitrate_kbps, s.vbr) == (48000, 2, 192, False)
    assert opts.resolve(options(vbr_quality=0), 44100).vbr


# --- Fast path: MP3 in, MP3 out, no re-encoding ----------------------------------

@pytest.mark.parametrize(("name", "kw"), [
    ("song.mp3", dict(video_codec=None, sample_rate=44100)),
    ("mono22k.mp3", dict(video_codec=None, sample_rate=22050, layout="mono")),
    ("low8k.mp3", dict(video_codec=None, sample_rate=8000, layout="mono")),
    ("clip.mp4", dict(sample_rate=44100)),
    ("clip.mkv", dict(sample_rate=48000)),
    ("clip.avi", dict(sample_rate=44100)),
    ("clip.flv", dict(sample_rate=44100)),
    ("clip.wmv", dict(sample_rate=44100)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_mp3_source_is_copied(tmp_path, name, kw):
    path = make_media(tmp_path / name, audio_codec="mp3", duration=2.0,
                      metadata={"title": "Copied"}, **kw)
    result, data = convert(path)
    assert result.copied
    rate = kw["sample_rate"]
    channels = 1 if kw.get("layout") == "mono" else 2
    check_mp3(data, duration=audio_duration(path), rate=rate, channels=channels, title="Copied")
    # The very same frames as the source: nothing was re-encoded.
    with av.open(path) as c:
        source_frames = b"".join(bytes(p) for p in c.demux(c.streams.audio[0]) if p.size)
    assert split_mp3(data)[2] == source_frames


def test_mp3_file_keeps_its_gapless_info(tmp_path):
    path = make_media(tmp_path / "song.mp3", video_codec=None, audio_codec="mp3",
                      sample_rate=44100, duration=1.234)
    source = Path(path).read_bytes()
    src_tag = info_frame.read_lame_tag(source)
    assert src_tag is not None
    result, data = convert(path)
    info = read_info_frame(split_mp3(data)[1])
    assert (info["delay"], info["padding"]) == (src_tag.delay, src_tag.padding)
    assert round(analyse_mp3(data)[0] * 44100) == round(audio_duration(path) * 44100)
    assert result.duration_seconds == pytest.approx(audio_duration(path), abs=1e-4)


def test_vbr_mp3_copied_as_vbr(tmp_path):
    """A VBR source (here one of our own V2 outputs) keeps a Xing (VBR) tag."""
    source = tmp_path / "vbr.mp3"
    _, data = convert(make_media(tmp_path / "clip.mp4", duration=1.5), options(vbr_quality=2))
    source.write_bytes(data)
    result, copied = convert(source)
    assert result.copied
    info = check_mp3(copied, duration=audio_duration(source))
    assert info["kind"] == b"Xing"
    assert split_mp3(copied)[2] == split_mp3(data)[2]


@pytest.mark.parametrize("change", [dict(bitrate_kbps=96), dict(vbr_quality=2), dict(channels=1),
                                    dict(sample_rate_hz=22050)])
def test_mp3_source_with_changes_is_reencoded(tmp_path, change):
    path = make_media(tmp_path / "song.mp3", video_codec=None, audio_codec="mp3",
                      sample_rate=44100, duration=1.5)
    result, data = convert(path, options(**change))
    assert not result.copied
    check_mp3(data, duration=audio_duration(path), channels=change.get("channels", 2),
              rate=change.get("sample_rate_hz", 44100))


def test_mp3_source_options_equal_to_source_still_copy(tmp_path):
    path = make_media(tmp_path / "song.mp3", video_codec=None, audio_codec="mp3",
                      sample_rate=44100, duration=1.0, audio_bit_rate=128_000)
    result, _ = convert(path, options(bitrate_kbps=128, channels=2, sample_rate_hz=44100))
    assert result.copied


# --- Tags ------------------------------------------------------------------------

def test_id3_from_source_metadata(tmp_path):
    meta = {"title": "Night Drive", "artist": "The Testers", "album": "Fixtures",
            "date": "2024-05-17", "genre": "Synthwave"}
    path = make_media(tmp_path / "clip.mp4", metadata=meta, duration=1.0)
    _, data = convert(path, filename="ignored.mp4")
    tags = id3_tags(data)
    assert tags["title"] == "Night Drive"
    assert tags["artist"] == "The Testers"
    assert tags["album"] == "Fixtures"
    assert tags["date"].startswith("2024")
    assert tags["genre"] == "Synthwave"
    assert data[:3] == b"ID3"
    assert data[3] == 3


@pytest.mark.parametrize("name", ["clip.mkv", "clip.ogg", "clip.flac"])
def test_id3_from_other_containers(tmp_path, name):
    codec = {"clip.ogg": "vorbis", "clip.flac": "flac"}.get(name, "aac")
    path = make_media(tmp_path / name, audio_codec=codec, duration=1.0,
                      video_codec=None if name != "clip.mkv" else "auto",
                      metadata={"title": "Tagged", "artist": "Someone"})
    _, data = convert(path)
    tags = id3_tags(data)
    assert (tags.get("title"), tags.get("artist")) == ("Tagged", "Someone")


@pytest.mark.parametrize(("filename", "title"), [
    ("holiday video.mp4", "holiday video"),
    ("C:\\Users\\me\\Café \u2013 東京.mov", "Café \u2013 東京"),  # an en dash
    ("archive.tar.mp4", "archive.tar"),
])
def test_title_from_file_name(tmp_path, filename, title):
    path = make_media(tmp_path / "x.mp4", duration=1.0)
    _, data = convert(path, filename=filename)
    assert id3_tags(data)["title"] == title


def test_no_title_at_all(tmp_path):
    path = make_media(tmp_path / "x.mp4", duration=1.0)
    _, data = convert(path, filename="")
    assert "title" not in id3_tags(data)
    check_mp3(data, duration=audio_duration(path))


# --- Failures --------------------------------------------------------------------

def test_text_file(tmp_path):
    with pytest.raises(ConversionError, match=r"^not a media file$"):
        convert(make_text_file(tmp_path / "notes.txt"))


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(ConversionError, match=r"^not a media file$"):
        convert(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(ConversionError, match=r"^not a media file$"):
        convert(path)


@pytest.mark.parametrize("name", ["silent.mp4", "silent.mkv", "silent.avi"])
def test_video_without_audio(tmp_path, name):
    path = make_media(tmp_path / name, audio_codec=None, duration=1.0)
    with pytest.raises(ConversionError, match=r"^no audio track$"):
        convert(path)


@pytest.mark.parametrize(("name", "kw"), [
    ("end.mp4", dict()),                            # moov at the end: never written
    ("start.mp4", dict(faststart=True)),            # moov first: half the samples missing
    ("clip.mkv", dict()),
    ("song.mp3", dict(video_codec=None, audio_codec="mp3")),
    ("sound.flac", dict(video_codec=None, audio_codec="flac")),
])
def test_truncated(tmp_path, name, kw):
    full = make_media(tmp_path / name, duration=3.0, **kw)
    cut = make_truncated(full, tmp_path / f"cut_{name}", keep=0.5)
    with pytest.raises(ConversionError, match="truncated"):
        convert(cut)


def test_corrupt_middle(tmp_path):
    path = make_media(tmp_path / "clip.mp4", faststart=True, duration=3.0)
    data = bytearray(Path(path).read_bytes())
    n = len(data)
    noise = np.random.default_rng(0).integers(0, 256, n // 4, dtype=np.uint8).tobytes()
    data[n // 3: n // 3 + n // 4] = noise  # a quarter of the file overwritten
    Path(path).write_bytes(data)
    with pytest.raises(ConversionError, match="corrupt"):
        convert(path)


def test_small_glitch_still_converts(tmp_path):
    """One damaged packet in a long file costs a few ms, not the conversion."""
    path = make_media(tmp_path / "clip.mp4", video_codec=None, faststart=True, duration=6.0)
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\x55" * 64
    Path(path).write_bytes(data)
    _result, mp3 = convert(path)
    duration, freq, _, _ = analyse_mp3(mp3)
    assert abs(duration - 6.0) < 0.1
    assert abs(freq - 440) < FREQ_TOLERANCE_HZ


def test_zero_length_audio(tmp_path):
    path = make_media(tmp_path / "nothing.wav", video_codec=None, audio_codec="pcm_s16le", duration=0)
    with pytest.raises(ConversionError, match="empty"):
        convert(path)


def test_damaged_header(tmp_path):
    path = make_media(tmp_path / "clip.mkv", duration=1.0)
    data = bytearray(Path(path).read_bytes())
    data[4:200] = bytes(196)  # EBML magic kept, the header after it zeroed
    Path(path).write_bytes(data)
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        convert(path)


# --- Streaming, progress, threads --------------------------------------------------

def test_writes_as_it_goes(tmp_path):
    path = make_media(tmp_path / "clip.m4a", video_codec=None, duration=20.0)
    sink, src = Sink(), Source(path)
    result = transcode(src, sink, options(), filename="clip.m4a")  # type: ignore[arg-type]  # Source: see its import
    assert len(sink.chunks) > 10  # streamed, not one buffer at the end
    assert max(len(c) for c in sink.chunks) < 256 * 1024
    assert result.header_patch is not None
    offset, patch = result.header_patch
    assert sink.stored(None)[:offset] == b"".join(sink.chunks)[:offset]
    assert len(patch) == len(split_mp3(sink.stored(None))[1])  # same size as the placeholder


def test_progress(tmp_path, monkeypatch):
    import video2mp3.converter.transcode as t
    path = make_media(tmp_path / "clip.m4a", video_codec=None, duration=20.0)
    monkeypatch.setattr(t, "PROGRESS_INTERVAL_S", 0.0)
    seen: list[tuple[float, str]] = []
    convert(path, on_progress=lambda f: seen.append((f, threading.current_thread().name)))
    fractions = [f for f, _ in seen]
    assert len(fractions) > 5
    assert fractions == sorted(fractions)
    assert 0 <= fractions[0] < 0.5
    assert fractions[-1] == 1.0
    assert {name for _, name in seen} == {threading.current_thread().name}


def test_progress_is_throttled(tmp_path):
    import time
    path = make_media(tmp_path / "clip.m4a", video_codec=None, duration=30.0)
    calls: list[float] = []
    start = time.monotonic()
    convert(path, on_progress=calls.append)
    elapsed = time.monotonic() - start
    assert calls[-1] == 1.0
    assert len(calls) <= elapsed / 0.25 + 2


def test_progress_callback_error_stops_cleanly(tmp_path):
    path = make_media(tmp_path / "clip.m4a", video_codec=None, duration=10.0)
    before = threading.active_count()

    def boom(_):
        raise KeyError("lease lost")

    with pytest.raises(KeyError):
        convert(path, on_progress=boom)
    assert threading.active_count() == before  # helper threads are gone


def test_sink_error_propagates(tmp_path):
    path = make_media(tmp_path / "clip.m4a", video_codec=None, duration=10.0)
    before = threading.active_count()

    class Failing(Sink):
        def write(self, data):
            if len(self.chunks) > 3:
                raise OSError("storage went away")
            super().write(data)

    with pytest.raises(IOError, match="storage went away"):
        transcode(Source(path), Failing(), options())  # type: ignore[arg-type]  # Source: see its import
    assert threading.active_count() == before


def test_overlap_makes_no_difference_to_the_bytes(clip):
    _, threaded = convert(clip, overlap=True)
    _, inline = convert(clip, overlap=False)
    assert threaded == inline


@pytest.mark.parametrize("backend", ["lameenc", "system"])
def test_encoder_builds(clip, backend):
    """Both LAME builds give a good MP3; "system" falls back to lameenc when
    Debian's libmp3lame0 is not installed."""
    used = lame.backend_name(backend)
    assert used in (backend, "lameenc")
    _, data = convert(clip, encoder=backend)
    check_mp3(data, duration=audio_duration(clip), rate=48000)


def test_falls_back_to_lameenc_without_debian_lame(clip, monkeypatch):
    monkeypatch.setattr(lame._SystemLame, "_lib", False)  # as if libmp3lame0 were missing
    assert lame.backend_name() == "lameenc"
    _, data = convert(clip)
    check_mp3(data, duration=audio_duration(clip), rate=48000)


def test_id3_unicode_metadata(tmp_path):
    """Non-Latin-1 text goes in as UTF-16 (ID3v2.3 has no UTF-8) and reads back."""
    path = make_media(tmp_path / "clip.mkv", duration=1.0,
                      metadata={"title": "Ünïcødé ✓ 東京", "artist": "plain", "date": "1999"})
    _, data = convert(path)
    tags = id3_tags(data)
    assert tags["title"] == "Ünïcødé ✓ 東京"
    assert tags["artist"] == "plain"
    assert tags["date"] == "1999"
