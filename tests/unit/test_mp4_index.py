"""converter.mp4_index against files made here with PyAV, checked against
FFmpeg's own view of them: every packet's byte position and size (packet.pos,
packet.size) says exactly where each track's samples are.

Then the point of it all: converting with the skipped bytes zeroed gives the
very same MP3 as converting the file as it is.
"""
from __future__ import annotations

import io
import itertools
import os
from pathlib import Path
from typing import Any

import av
import pytest

from testkit.media import ReadSeekOnly, make_media, make_truncated, mp3_bytes
from video2mp3.converter.mp4_index import skippable_ranges
from video2mp3.media.v1 import media_pb2

# Big noisy frames: video chunks much larger than the audio ones, like a real video.
VIDEO_HEAVY: dict[str, Any] = {"video_codec": "h264", "video_size": (160, 120), "video_noise": 60, "duration": 2.0}


def packet_ranges(path) -> dict[str, list[tuple[int, int]]]:
    """[pos, pos + size) of every packet, by stream type (FFmpeg's view)."""
    out: dict[str, list[tuple[int, int]]] = {"audio": [], "video": [], "other": []}
    with av.open(os.fspath(path)) as c:
        for p in c.demux():
            if p.size and p.pos is not None and p.pos >= 0:
                kind = p.stream.type if p.stream.type in ("audio", "video") else "other"
                out[kind].append((p.pos, p.pos + p.size))
    return out


def covered(ranges, start: int, end: int) -> bool:
    return any(s <= start and end <= e for s, e in ranges)


def overlaps(ranges, start: int, end: int) -> bool:
    return any(s < end and start < e for s, e in ranges)


def index(path):
    with open(path, "rb") as f:
        f.seek(5)
        ranges = skippable_ranges(f)
        assert f.tell() == 5  # the position is restored
    return ranges


def check_against_ffmpeg(path) -> list[tuple[int, int]]:
    ranges = index(path)
    assert ranges is not None
    assert ranges == sorted(ranges)
    assert all(s < e for s, e in ranges)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges)), "not merged"
    packets = packet_ranges(path)
    for start, end in packets["audio"] + packets["other"]:
        assert not overlaps(ranges, start, end), (start, end)
    for start, end in packets["video"]:
        assert covered(ranges, start, end), (start, end)
    # Nothing but video samples: the ranges are exactly the video packets' bytes.
    assert sum(e - s for s, e in ranges) == sum(e - s for s, e in packets["video"])
    return ranges


@pytest.mark.parametrize(("name", "kw"), [
    ("av.mp4", {}),
    ("faststart.mp4", {"faststart": True}),
    ("two_audio.mp4", {"n_audio_tracks": 2}),
    ("clip.mov", {}),
    ("two_audio.mov", {"n_audio_tracks": 3, "default_track": 1}),
    ("late.mp4", {"start_pts": 1.5}),
])
def test_ranges_are_exactly_the_video_samples(tmp_path, name, kw):
    path = make_media(tmp_path / name, **{**VIDEO_HEAVY, **kw})
    ranges = check_against_ffmpeg(path)
    assert ranges, "a video track, yet nothing to skip"
    assert sum(e - s for s, e in ranges) > 0.5 * os.path.getsize(path)


@pytest.mark.parametrize("name", ["audio.m4a", "audio.mp4", "audio.mov"])
def test_audio_only_skips_nothing(tmp_path, name):
    path = make_media(tmp_path / name, video_codec=None, duration=1.0)
    assert index(path) == []


def remux(src, dst, **options) -> str:
    """Copy every stream of src into dst with muxer options (e.g. fragmented)."""
    with av.open(os.fspath(src)) as i, av.open(os.fspath(dst), "w", format="mp4", options=options) as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for p in i.demux():
            if p.dts is not None:
                p.stream = streams[p.stream.index]
                o.mux(p)
    return os.fspath(dst)


@pytest.mark.parametrize("movflags", ["frag_keyframe+empty_moov", "frag_keyframe+empty_moov+default_base_moof",
                                      "frag_keyframe"])
def test_fragmented_mp4_reads_everything(tmp_path, movflags):
    src = make_media(tmp_path / "src.mp4", **VIDEO_HEAVY)
    assert index(remux(src, tmp_path / "frag.mp4", movflags=movflags)) is None


def test_remuxed_plain_mp4_is_indexed(tmp_path):
    """The remux helper itself makes ordinary files (so None above is the fragmenting)."""
    src = make_media(tmp_path / "src.mp4", **VIDEO_HEAVY)
    check_against_ffmpeg(remux(src, tmp_path / "plain.mp4"))


@pytest.mark.parametrize(("name", "kw"), [
    ("clip.mkv", {}), ("clip.webm", {"audio_codec": "libopus"}), ("clip.ts", {}),
    ("tone.mp3", {"video_codec": None, "audio_codec": "mp3"}),
])
def test_other_containers_read_everything(tmp_path, name, kw):
    assert index(make_media(tmp_path / name, duration=1.0, **kw)) is None


@pytest.mark.parametrize("faststart", [False, True])
def test_truncated_reads_everything(tmp_path, faststart):
    path = make_media(tmp_path / "full.mp4", faststart=faststart, **VIDEO_HEAVY)
    assert index(make_truncated(path, tmp_path / "cut.mp4", keep=0.6)) is None


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x00\x08ftyp", b"\x00\x00\x00\x10ftypisom\x00\x00\x00",
                                  b"\x00\x00\x00\x01moov" + b"\xff" * 8, os.urandom(4096)])
def test_junk_reads_everything(data):
    assert skippable_ranges(io.BytesIO(data)) is None


def test_corrupt_moov_reads_everything(tmp_path):
    path = make_media(tmp_path / "clip.mp4", faststart=True, **VIDEO_HEAVY)
    data = bytearray(Path(path).read_bytes())
    at = data.index(b"stsz")
    data[at + 12:at + 16] = (10 ** 6).to_bytes(4, "big")  # more samples than the table holds
    assert skippable_ranges(io.BytesIO(bytes(data))) is None


def test_external_data_reference_reads_everything(tmp_path):
    path = make_media(tmp_path / "clip.mp4", faststart=True, **VIDEO_HEAVY)
    data = bytearray(Path(path).read_bytes())
    at = data.index(b"url ")
    data[at + 7] &= 0xFE  # "the data is in another file"
    assert skippable_ranges(io.BytesIO(bytes(data))) is None


# --- the MP3 is the same with the skipped bytes zeroed ---------------------------

class Zeroed(ReadSeekOnly):
    """The file with `ranges` read as zeros (what a skipping download hands PyAV)."""

    def __init__(self, path, ranges) -> None:
        super().__init__(path)
        self._ranges = ranges

    def read(self, n=-1):
        pos = self._f.tell()
        data = bytearray(self._f.read(n))
        for s, e in self._ranges:
            a, b = max(s, pos), min(e, pos + len(data))
            if a < b:
                data[a - pos:b - pos] = bytes(b - a)
        return bytes(data)


@pytest.mark.parametrize(("name", "kw", "options"), [
    ("av.mp4", {}, {}),
    ("moov_last.mov", {}, {"bitrate_kbps": 128}),
    ("faststart.mp4", {"faststart": True}, {"channels": 1}),
    ("tracks.mp4", {"n_audio_tracks": 3}, {"audio_track": 2}),
    ("tracks.mov", {"n_audio_tracks": 2, "default_track": 1}, {}),
    ("late.mov", {"start_pts": 0.7}, {}),  # an edit list with an empty edit
    ("mp3.mp4", {"audio_codec": "mp3"}, {}),
])
def test_skipping_gives_the_same_mp3(tmp_path, name, kw, options):
    path = make_media(tmp_path / name, **{**VIDEO_HEAVY, **kw})
    ranges = index(path)
    assert ranges
    opts = media_pb2.ConversionOptions(**options)
    with open(path, "rb") as plain:
        expected = mp3_bytes(plain, opts, filename="x.mp4", overlap=False)
    with Zeroed(path, ranges) as zeroed:
        assert mp3_bytes(zeroed, opts, filename="x.mp4", overlap=False) == expected
