"""Files the converter cannot fully read: conversion errors, not crashes."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

from testkit.media import make_media
from video2mp3.converter.transcode import ConversionError, transcode
from video2mp3.media.v1 import media_pb2


def test_tags_that_are_not_utf8_do_not_stop_the_conversion(tmp_path):
    data = Path(make_media(tmp_path / "tagged.mkv", duration=1.0, metadata={"title": "café song"})).read_bytes()
    damaged = data.replace("café".encode(), b"caf\xff\xfe")
    assert damaged != data
    result = transcode(io.BytesIO(damaged), io.BytesIO(), media_pb2.ConversionOptions(), "tagged.mkv")
    assert result.title.startswith("caf")
    assert result.title.endswith(" song")


def test_an_audio_track_without_a_decoder_is_a_conversion_error(tmp_path):
    data = bytearray(Path(make_media(tmp_path / "tone.wav", video_codec=None, audio_codec="pcm_s16le",
                                     duration=0.5)).read_bytes())
    fmt = data.find(b"fmt ")
    data[fmt + 8:fmt + 10] = (0x7777).to_bytes(2, "little")  # an unknown WAVE format tag
    with pytest.raises(ConversionError, match="format is not supported"):
        transcode(io.BytesIO(bytes(data)), io.BytesIO(), media_pb2.ConversionOptions(), "tone.wav")
