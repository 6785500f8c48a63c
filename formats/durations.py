"""How long a media file says it is, from its own bytes, before any decoding.

    from_head(head)          from the first bytes: a faststart MP4/MOV (its
                             `mvhd`), a WAV (data size / byte rate)
    from_tail(head, tail)    from the first and the last bytes: Ogg Opus or
                             Vorbis (the last page's granule position)
    mp4_from_file(f, length) an MP4/MOV whose `moov` comes last, read from a
                             seekable file: its top-level box headers, then
                             the start of `moov`
    of_file(f, length)       any of these, from a seekable file (a few small reads)

Each returns seconds, or None when the bytes do not say (another format, a
streaming WAV, a fragmented MP4, damage). The gateway uses them to refuse an
upload over the duration limit as early as the bytes tell
(gateway/quotas.py); what a file declares can be a lie, so the converter
also counts what it decodes (converter/transcode.py). Pure: no I/O but the
file object given to mp4_from_file.
"""
from __future__ import annotations

import struct
from typing import BinaryIO

from video2mp3.formats import isobmff
from video2mp3.formats.containers import Container, identify

# How much of a file's start from_head wants, and of its end from_tail: Ogg
# pages are at most ~64 KB.
HEAD_BYTES = 64 * 1024
TAIL_BYTES = 64 * 1024
_MOOV_PREFIX = 4096  # `mvhd` is the first box in `moov` in practice; its size is ~108 bytes


def from_head(head: bytes) -> float | None:
    container = identify(head)
    if container is Container.MP4:
        return _mp4_head(head)
    if container is Container.WAV:
        return _wav(head)
    return None


def from_tail(head: bytes, tail: bytes) -> float | None:
    if identify(head) is Container.OGG:
        return _ogg(head, tail)
    return None


def of_file(f: BinaryIO, length: int) -> float | None:
    f.seek(0)
    head = f.read(HEAD_BYTES) or b""
    f.seek(max(0, length - TAIL_BYTES))
    tail = f.read(TAIL_BYTES) or b""
    found = from_head(head) or from_tail(head, tail)
    if found is None and identify(head) is Container.MP4:
        found = mp4_from_file(f, length)
    return found


def mp4_from_file(f: BinaryIO, length: int) -> float | None:
    try:
        for box in isobmff.file_boxes(f, length):
            if box.kind == b"moov":
                f.seek(box.payload)
                return _mvhd_in(f.read(_MOOV_PREFIX) or b"")
    except isobmff.BoxError:
        return None
    return None


# --- MP4/MOV -------------------------------------------------------------------

def _mp4_head(head: bytes) -> float | None:
    try:
        for box in isobmff.prefix_boxes(head):
            if box.kind == b"moov":
                return _mvhd_in(head[box.payload:box.payload + _MOOV_PREFIX])
            if box.kind == b"mdat" or box.end is None:
                return None
    except isobmff.BoxError:
        return None
    return None


def _mvhd_in(moov: bytes) -> float | None:
    """The movie's duration from the `mvhd` among the first boxes of a `moov` payload prefix."""
    try:
        for box in isobmff.prefix_boxes(moov):
            if box.kind == b"mvhd":
                return _mvhd(moov[box.payload:box.end])
    except isobmff.BoxError:
        return None
    return None


def _mvhd(payload: bytes) -> float | None:
    try:
        if payload[:1] == b"\x01":  # version 1: 64-bit times
            timescale, duration = struct.unpack_from(">IQ", payload, 20)
            unknown = 2**64 - 1
        else:
            timescale, duration = struct.unpack_from(">II", payload, 12)
            unknown = 2**32 - 1
    except struct.error:
        return None
    if not timescale or not duration or duration == unknown:  # fragmented, or unknown
        return None
    return duration / timescale


# --- WAV ---------------------------------------------------------------------------

def _wav(head: bytes) -> float | None:
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        kind, size = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if kind == b"fmt " and pos + 16 <= len(head):
            byte_rate = struct.unpack_from("<I", head, pos + 16)[0]
        elif kind == b"data":
            # 0 and 0xFFFFFFFF: a WAV written while streaming, its size unknown.
            if not byte_rate or size in (0, 2**32 - 1):
                return None
            return size / byte_rate
        pos += 8 + size + (size & 1)
    return None


# --- Ogg ---------------------------------------------------------------------------

_OGG_HEADER = struct.Struct("<4sBBqII")  # capture, version, type, granule, serial, page number


def _ogg(head: bytes, tail: bytes) -> float | None:
    """Opus or Vorbis as the first logical stream: its last granule position / its rate."""
    if len(head) < _OGG_HEADER.size + 1:
        return None
    serial = _OGG_HEADER.unpack_from(head, 0)[4]
    segments = head[26]
    payload = head[27 + segments:]
    if payload.startswith(b"OpusHead") and len(payload) >= 12:
        rate, skip = 48000, struct.unpack_from("<H", payload, 10)[0]
    elif payload.startswith(b"\x01vorbis") and len(payload) >= 16:
        rate, skip = struct.unpack_from("<I", payload, 12)[0], 0
    else:
        return None
    granule = _last_granule(tail, serial)
    if granule is None or not rate:
        return None
    return max(0.0, (granule - skip) / rate)


def _last_granule(tail: bytes, serial: int) -> int | None:
    pos = tail.rfind(b"OggS")
    while pos >= 0:
        if pos + _OGG_HEADER.size <= len(tail):
            _, version, kind, granule, page_serial, _ = _OGG_HEADER.unpack_from(tail, pos)
            # -1: no packet ends on this page; version and type bits tell a page from "OggS" in data.
            if version == 0 and kind <= 7 and page_serial == serial and granule >= 0:
                return granule
        pos = tail.rfind(b"OggS", 0, pos)
    return None
