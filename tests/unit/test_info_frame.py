"""converter/info_frame.py's stream followers alone: the music CRC against the
obvious bitwise CRC, the frame scanner on any split of a real MP3. (The info
frames themselves are checked byte by byte on every MP3 of test_transcode.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from testkit.media import mp3_bytes
from video2mp3.converter import id3, info_frame
from video2mp3.formats import mpeg_audio


def crc16_bitwise(data: bytes) -> int:
    """CRC-16/ARC the slow, obvious way."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def audio_frames(data: bytes) -> bytes:
    """An MP3 file's audio frames: after its ID3v2 tag and its info frame."""
    start = id3.id3v2_size(data)
    header = mpeg_audio.parse_header(data[start:start + 4])
    assert header is not None, "no MP3 frame after the ID3 tag"
    return data[start + header.length:]


def count_frames(audio: bytes) -> int:
    """Frames of back-to-back MP3 frames, strictly."""
    pos = frames = 0
    while pos < len(audio):
        header = mpeg_audio.parse_header(audio[pos:pos + 4])
        assert header is not None, f"junk at byte {pos} of the audio"
        pos += header.length
        frames += 1
    assert pos == len(audio), "the last frame is cut short"
    return frames


@pytest.mark.parametrize("sizes", [[1], [1023, 1, 5000], [4096] * 3, [3, 70_000, 17]])
def test_music_crc_matches_bitwise(sizes):
    data = np.random.default_rng(sum(sizes)).integers(0, 256, sum(sizes), dtype=np.uint8).tobytes()
    crc = info_frame.MusicCrc()
    pos = 0
    for n in sizes:
        crc.update(data[pos:pos + n])
        pos += n
    assert crc.digest() == crc16_bitwise(data)


def test_frame_scanner_any_split(clip):
    with open(clip, "rb") as f:
        audio = audio_frames(mp3_bytes(f))
    frames = count_frames(audio)
    for piece in (1, 3, 417, 4096):
        scanner = info_frame.FrameScanner()
        for i in range(0, len(audio), piece):
            scanner.feed(audio[i:i + piece])
        assert scanner.frames == frames
        assert scanner.bytes == len(audio)
