"""Can a file be converted while it is still arriving? Decided from its first bytes.

A conversion that starts before the end of the file exists must never need
that end: FFmpeg reads a streamable container front to back. Streamable:
Matroska/WebM, MPEG-TS, FLV, Ogg, and audio files (MP3 with or without ID3,
ADTS AAC, FLAC, WAV). MP4/MOV only when its index (the `moov` box) comes
before the media data (`mdat`), i.e. it was written "faststart"; FFmpeg's
default puts `moov` at the end, and such a file cannot be read before it is
complete. Anything else, or anything not decidable within the bytes given,
is not streamable: it is converted once its upload has ended, as always.

    verdict(head)     STREAMABLE, NOT_STREAMABLE or NEED_MORE (give more bytes)
    streamable(head)  True / False; NEED_MORE counts as False
"""
from __future__ import annotations

import enum

from video2mp3.formats import isobmff

# The most the gateway holds back to decide; a faststart MP4 says so within
# its first ~100 bytes (ftyp, maybe free/wide, then the moov header).
SNIFF_BYTES = 64 * 1024

_TS_PACKET = 188


class Verdict(enum.Enum):
    STREAMABLE = "streamable"
    NOT_STREAMABLE = "not streamable"
    NEED_MORE = "need more bytes"


def streamable(head: bytes) -> bool:
    return verdict(head) is Verdict.STREAMABLE


def verdict(head: bytes) -> Verdict:
    """From the first bytes of a file (as many as are there: NEED_MORE asks for more)."""
    if len(head) < 12:
        return Verdict.NEED_MORE
    if head[4:8] in isobmff.LEADING:
        return _mp4(head)
    if head[0] == 0x47:  # MPEG-TS: a sync byte every 188 bytes
        if len(head) <= _TS_PACKET:
            return Verdict.NEED_MORE
        return _yes(head[_TS_PACKET] == 0x47)
    fixed = (
        head.startswith(b"\x1a\x45\xdf\xa3")  # EBML: Matroska, WebM
        or head.startswith(b"FLV\x01")
        or head.startswith(b"OggS")
        or head.startswith(b"fLaC")
        or head.startswith(b"ID3")  # MP3 (or AAC) behind an ID3v2 tag
        or (head.startswith(b"RIFF") and head[8:12] == b"WAVE")
    )
    return _yes(fixed or _mpeg_audio_frame(head))


def _yes(value: bool) -> Verdict:
    return Verdict.STREAMABLE if value else Verdict.NOT_STREAMABLE


def _mpeg_audio_frame(head: bytes) -> bool:
    """An MP3 frame header or an ADTS (AAC) header at byte 0."""
    if head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    layer = (head[1] >> 1) & 0x3
    if layer == 0:  # ADTS: syncword 0xFFF, layer 00
        return head[1] & 0xF0 == 0xF0
    version, bitrate, rate = (head[1] >> 3) & 0x3, head[2] >> 4, (head[2] >> 2) & 0x3
    return version != 1 and bitrate not in (0, 15) and rate != 3


def _mp4(head: bytes) -> Verdict:
    """Walks the top-level boxes: moov first is faststart, mdat first is not."""
    try:
        for box in isobmff.prefix_boxes(head):
            if box.kind == b"moov":
                return Verdict.STREAMABLE
            if box.kind == b"mdat" or box.kind not in isobmff.LEADING or box.end is None:
                return Verdict.NOT_STREAMABLE  # end None: "to the end of the file", no moov ahead
    except isobmff.BoxError:  # damaged
        return Verdict.NOT_STREAMABLE
    return Verdict.NEED_MORE
