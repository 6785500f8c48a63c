"""Can a file be converted while it is still arriving? Decided from its first bytes.

A conversion that starts before the end of the file exists must never need
that end: FFmpeg reads a streamable container front to back. Streamable:
Matroska/WebM, MPEG-TS, FLV, Ogg, and audio files (MP3 with or without ID3,
ADTS AAC, FLAC, WAV). MP4/MOV only when its index (the `moov` box) comes
before the media data (`mdat`), i.e. it was written "faststart"; FFmpeg's
default puts `moov` at the end, and such a file cannot be read before it is
complete: INDEX_AT_END, which a converter may copy to its disk as it arrives
and convert once it has ended (converter/spool.py). Anything else, or
anything not decidable within the bytes given, is not streamable: it is
converted once its upload has ended, as always.

    verdict(head)     STREAMABLE, INDEX_AT_END, NOT_STREAMABLE or NEED_MORE (give more bytes)
    streamable(head)  True / False; NEED_MORE counts as False
"""
from __future__ import annotations

import enum

from video2mp3.formats import isobmff
from video2mp3.formats.containers import HEAD_BYTES, TS_PACKET, Container, identify

# The most the gateway holds back to decide; a faststart MP4 says so within
# its first ~100 bytes (ftyp, maybe free/wide, then the moov header).
SNIFF_BYTES = 64 * 1024

# Read front to back by FFmpeg; MP4/MOV only when faststart (_mp4).
_STREAMABLE = {Container.MATROSKA, Container.MPEG_TS, Container.FLV, Container.OGG, Container.FLAC,
               Container.WAV, Container.ID3, Container.MPEG_AUDIO, Container.ADTS}


class Verdict(enum.Enum):
    STREAMABLE = "streamable"
    INDEX_AT_END = "MP4 with its index at the end"
    NOT_STREAMABLE = "not streamable"
    NEED_MORE = "need more bytes"


def streamable(head: bytes) -> bool:
    return verdict(head) is Verdict.STREAMABLE


def verdict(head: bytes) -> Verdict:
    """From the first bytes of a file (as many as are there: NEED_MORE asks for more)."""
    if len(head) < HEAD_BYTES:
        return Verdict.NEED_MORE
    container = identify(head)
    if container is Container.MP4:
        return _mp4(head)
    if container is Container.MPEG_TS and len(head) <= TS_PACKET:
        return Verdict.NEED_MORE  # one sync byte is not a TS yet: the next packet's must be one too
    return Verdict.STREAMABLE if container in _STREAMABLE else Verdict.NOT_STREAMABLE


def _mp4(head: bytes) -> Verdict:
    """Walks the top-level boxes: moov first is faststart, mdat first has its index at the end."""
    try:
        for box in isobmff.prefix_boxes(head):
            if box.kind == b"moov":
                return Verdict.STREAMABLE
            if box.end is None:
                return Verdict.NOT_STREAMABLE  # "to the end of the file": no moov ahead
            if box.kind == b"mdat":
                return Verdict.INDEX_AT_END
            if box.kind not in isobmff.LEADING:
                return Verdict.NOT_STREAMABLE
    except isobmff.BoxError:  # damaged
        return Verdict.NOT_STREAMABLE
    return Verdict.NEED_MORE
