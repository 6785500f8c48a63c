"""formats/mpeg_audio.py: MPEG audio frame headers, from hand-made bytes
(real streams go through it in test_transcode.py and test_split_encode.py)."""
from __future__ import annotations

import pytest

from video2mp3.formats import mpeg_audio

MP3_128K = bytes((0xFF, 0xFB, 0x90, 0x64))   # MPEG-1 Layer III, 128 kbps, 44.1 kHz, joint stereo
MP3_LSF = bytes((0xFF, 0xF3, 0x80, 0xC4))    # MPEG-2 Layer III, 64 kbps, 22.05 kHz, mono
MP2 = bytes((0xFF, 0xFD, 0x90, 0x04))        # MPEG-1 Layer II
ADTS = bytes((0xFF, 0xF1, 0x50, 0x80))       # AAC in ADTS


def test_a_layer_iii_header():
    h = mpeg_audio.parse_header(MP3_128K + b"rest")
    assert h is not None
    assert (h.version_id, h.bitrate_kbps, h.sample_rate, h.padding, h.channel_mode) == (3, 128, 44100, 0, 1)
    assert (h.samples_per_frame, h.length, h.side_info_size) == (1152, 417, 32)
    assert not h.lsf
    assert h.bitrates[0] == 32
    assert h.bitrates[-1] == 320


def test_a_low_sampling_frequency_header():
    h = mpeg_audio.parse_header(MP3_LSF)
    assert h is not None
    assert (h.lsf, h.bitrate_kbps, h.sample_rate, h.channel_mode) == (True, 64, 22050, 3)
    assert (h.samples_per_frame, h.length, h.side_info_size) == (576, 72 * 64000 // 22050, 9)
    assert mpeg_audio.samples_per_frame(22050) == 576
    assert mpeg_audio.samples_per_frame(48000) == 1152


@pytest.mark.parametrize("b", [
    MP2, ADTS, b"\xff\xfb", b"ID3\x03",
    bytes((0xFF, 0xFB, 0xF0, 0x64)),  # bitrate index 15
    bytes((0xFF, 0xFB, 0x00, 0x64)),  # free format
    bytes((0xFF, 0xFB, 0x9C, 0x64)),  # reserved sample rate
    bytes((0xFF, 0xEB, 0x90, 0x64)),  # reserved version
])
def test_not_layer_iii(b):
    assert mpeg_audio.parse_header(b) is None


def test_any_layer_and_adts_are_recognised():
    assert mpeg_audio.is_frame_header(MP3_128K)
    assert mpeg_audio.is_frame_header(MP2)
    assert not mpeg_audio.is_frame_header(ADTS)
    assert mpeg_audio.is_adts_header(ADTS)
    assert not mpeg_audio.is_adts_header(MP3_128K)
    assert not mpeg_audio.is_frame_header(b"\xff")


def test_with_bitrate_keeps_the_rest():
    h = mpeg_audio.parse_header(MP3_128K)
    assert h is not None
    low = mpeg_audio.with_bitrate(h, 32)
    assert (low.bitrate_kbps, low.sample_rate, low.channel_mode, low.padding) == (32, 44100, 1, 0)
    assert low.raw[1] & 1  # no CRC


def test_frames_stop_at_junk_or_a_cut_frame():
    h = mpeg_audio.parse_header(MP3_128K)
    assert h is not None
    frame = MP3_128K + bytes(h.length - 4)
    assert [pos for pos, _ in mpeg_audio.frames(frame * 3)] == [0, 417, 834]
    assert [pos for pos, _ in mpeg_audio.frames(frame * 2 + b"junk" + frame)] == [0, 417]
    assert [pos for pos, _ in mpeg_audio.frames(frame * 2 + frame[:100])] == [0, 417]
