"""formats/containers.py: files made by FFmpeg (testkit/media.py) are told
apart by their first bytes; anything else is not a container."""
from __future__ import annotations

import pytest

from testkit.media import make_media, make_text_file
from video2mp3.formats.containers import Container, identify


@pytest.mark.parametrize(("name", "kwargs", "container"), [
    ("a.mp4", dict(video_codec="h264"), Container.MP4),
    ("a.mov", dict(video_codec="h264", faststart=True), Container.MP4),
    ("a.m4a", dict(video_codec=None), Container.MP4),
    ("a.mkv", {}, Container.MATROSKA),
    ("a.webm", dict(audio_codec="libopus"), Container.MATROSKA),
    ("a.ts", {}, Container.MPEG_TS),
    ("a.flv", {}, Container.FLV),
    ("a.ogg", dict(audio_codec="vorbis", video_codec=None), Container.OGG),
    ("a.flac", dict(audio_codec="flac", video_codec=None), Container.FLAC),
    ("a.wav", dict(audio_codec="pcm_s16le", video_codec=None), Container.WAV),
    ("a.avi", {}, Container.RIFF),
    ("a.wmv", dict(audio_codec="wmav2"), Container.ASF),
    ("a.mp3", dict(audio_codec="libmp3lame", video_codec=None), Container.ID3),
    ("a.aac", dict(video_codec=None), Container.ADTS),
])
def test_files_made_by_ffmpeg(tmp_path, name, kwargs, container):
    path = make_media(tmp_path / name, duration=1.0, **kwargs)
    with open(path, "rb") as f:
        assert identify(f.read(4096)) is container


def test_mp3_frames_without_a_tag(tmp_path):
    path = make_media(tmp_path / "a.mp3", audio_codec="libmp3lame", video_codec=None, duration=1.0)
    with open(path, "rb") as f:
        data = f.read()
    size = 10 + int.from_bytes(bytes(b & 0x7F for b in data[6:10]), "big")
    assert identify(data[size:size + 64]) is Container.MPEG_AUDIO


def test_mpeg_ts_needs_its_second_sync_byte():
    assert identify(b"\x47" + bytes(63)) is Container.MPEG_TS           # too short to say otherwise
    assert identify(b"\x47" + bytes(300)) is None                        # one sync byte is not a TS
    assert identify((b"\x47" + bytes(187)) * 2) is Container.MPEG_TS


def test_not_media(tmp_path):
    with open(make_text_file(tmp_path / "a.txt"), "rb") as f:
        assert identify(f.read(64)) is None
    assert identify(bytes(range(256))) is None
    assert identify(b"") is None
