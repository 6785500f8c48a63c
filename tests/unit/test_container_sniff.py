"""gateway/container_sniff.py: which uploads may be converted while they arrive,
judged from real files made by FFmpeg (testkit/media.py) and hand-made MP4 boxes."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from testkit.media import make_media, make_text_file
from video2mp3.gateway.container_sniff import SNIFF_BYTES, Verdict, streamable, verdict


def head_of(path) -> bytes:
    with open(path, "rb") as f:
        return f.read(SNIFF_BYTES)


@pytest.mark.parametrize(("name", "kwargs"), [
    ("a.mkv", {}),
    ("a.webm", dict(audio_codec="libopus")),
    ("a.ts", {}),
    ("a.flv", {}),
    ("a.ogg", dict(audio_codec="vorbis", video_codec=None)),
    ("a.mp3", dict(audio_codec="libmp3lame", video_codec=None)),
    ("a.aac", dict(video_codec=None)),
    ("a.flac", dict(audio_codec="flac", video_codec=None)),
    ("a.wav", dict(audio_codec="pcm_s16le", video_codec=None)),
    ("fast.mp4", dict(video_codec="h264", faststart=True)),
    ("fast.mov", dict(video_codec="h264", faststart=True)),
    ("fast.m4a", dict(video_codec=None, faststart=True)),
])
def test_streamable_files(tmp_path, name, kwargs):
    path = make_media(tmp_path / name, duration=1.0, **kwargs)
    assert verdict(head_of(path)) is Verdict.STREAMABLE


def test_an_mp3_without_id3_is_streamable(tmp_path):
    data = Path(make_media(tmp_path / "a.mp3", audio_codec="libmp3lame", video_codec=None,
                           duration=1.0)).read_bytes()
    size = 10 + int.from_bytes(bytes(b & 0x7F for b in data[6:10]), "big")  # skip the ID3v2 tag
    assert data.startswith(b"ID3")
    assert streamable(data[size:size + SNIFF_BYTES])


@pytest.mark.parametrize(("name", "kwargs", "expected"), [
    # FFmpeg's default: moov at the end, which a converter may copy as it arrives
    ("slow.mp4", dict(video_codec="h264"), Verdict.INDEX_AT_END),
    ("slow.mov", dict(video_codec="h264"), Verdict.INDEX_AT_END),
    ("slow.m4a", dict(video_codec=None), Verdict.INDEX_AT_END),
    ("a.avi", {}, Verdict.NOT_STREAMABLE),
    ("a.wmv", dict(audio_codec="wmav2"), Verdict.NOT_STREAMABLE),
])
def test_not_streamable_files(tmp_path, name, kwargs, expected):
    path = make_media(tmp_path / name, duration=1.0, **kwargs)
    assert verdict(head_of(path)) is expected
    assert not streamable(head_of(path))


def test_text_and_random_bytes_are_not_streamable(tmp_path):
    assert not streamable(head_of(make_text_file(tmp_path / "a.txt")))
    assert not streamable(bytes(range(256)) * 10)
    assert not streamable(b"\x47" + b"\x00" * 300)  # one TS sync byte is not a TS


def box(kind: bytes, size: int) -> bytes:
    return struct.pack(">I4s", size, kind) + b"\x00" * max(0, size - 8)


def test_mp4_box_walk():
    ftyp = box(b"ftyp", 32)
    assert verdict(ftyp + box(b"free", 8) + box(b"moov", 8)) is Verdict.STREAMABLE
    assert verdict(ftyp + box(b"wide", 8) + box(b"mdat", 16)) is Verdict.INDEX_AT_END
    # A 64-bit mdat size, as FFmpeg writes for big files, is still "mdat first".
    big_mdat = struct.pack(">I4sQ", 1, b"mdat", 5 << 30)
    assert verdict(ftyp + big_mdat) is Verdict.INDEX_AT_END
    # An mdat "to the end of the file" leaves no room for an index after it.
    assert verdict(ftyp + struct.pack(">I4s", 0, b"mdat") + b"\x00" * 100) is Verdict.NOT_STREAMABLE
    # A box bigger than what was sniffed: undecidable, so not streamable.
    big_free = box(b"free", 8)[:0] + struct.pack(">I4s", 2 * SNIFF_BYTES, b"free")
    assert verdict(ftyp + big_free + b"\x00" * 100) is Verdict.NEED_MORE
    assert not streamable(ftyp + big_free + b"\x00" * 100)
    assert verdict(ftyp[:10]) is Verdict.NEED_MORE
    # An unknown box before moov, or a damaged size: not streamable.
    assert verdict(ftyp + box(b"zzzz", 8) + box(b"moov", 8)) is Verdict.NOT_STREAMABLE
    assert verdict(ftyp + struct.pack(">I4s", 0, b"free") + box(b"moov", 8)) is Verdict.NOT_STREAMABLE
