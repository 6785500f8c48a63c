"""ID3v2 tags: the title, artist, album... an MP3 carries before its frames.

Written from ID3v2.3.0. tags_for() picks them from the source's metadata (the
title from the file name else); build_id3v2() makes the tag the MP3 starts
with, with a picture (APIC) and chapters (CHAP and one CTOC, the ID3v2
Chapter Frame Addendum, which applies to v2.3) when given; id3v2_size() skips
a source MP3's own.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def tags_for(stream_metadata: Mapping[str, str], container_metadata: Mapping[str, str],
             filename: str) -> dict[str, str]:
    """Title/artist/album/... from the file's metadata (the container's
    over the stream's), the title from the file name else."""
    meta: dict[str, str] = {}
    for source in (stream_metadata, container_metadata):  # container wins
        meta.update({k.lower(): v.strip() for k, v in source.items() if v and v.strip()})

    def first(*keys: str) -> str:
        return next((meta[k] for k in keys if meta.get(k)), "")

    tags = {
        "title": first("title") or _stem(filename),
        "artist": first("artist", "author", "album_artist"),
        "album": first("album"),
        "album_artist": first("album_artist", "album artist"),
        "track": first("track", "tracknumber"),
        "genre": first("genre"),
    }
    year = re.match(r"\s*(\d{4})", first("date", "year", "originaldate"))
    if year:
        tags["year"] = year.group(1)
    return {k: v for k, v in tags.items() if v}


def _stem(filename: str) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return os.path.splitext(base)[0].strip()


def id3v2_size(head: bytes) -> int:
    """Length of the ID3v2 tag at the start of head (0 if none)."""
    if len(head) < 10 or head[:3] != b"ID3":
        return 0
    size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
    return 10 + size + (10 if head[5] & 0x10 else 0)  # + footer


# ID3v2.3 text frames for the tags we carry over.
ID3_FRAMES = {
    "title": "TIT2", "artist": "TPE1", "album": "TALB", "album_artist": "TPE2",
    "year": "TYER", "track": "TRCK", "genre": "TCON", "encoder": "TSSE",
}


@dataclass(frozen=True)
class Chapter:
    """A chapter of the MP3: times in ms from its first sample."""
    start_ms: int
    end_ms: int
    title: str


# APIC picture type 3: "Cover (front)".
_FRONT_COVER = 3
# CTOC flags: top-level (bit 1) and ordered (bit 0).
_CTOC_TOP_ORDERED = 0x03
# A CTOC lists at most 255 children (its entry count is one byte).
_MAX_CTOC_ENTRIES = 255


def build_id3v2(tags: dict[str, str], picture: tuple[str, bytes] | None = None,
                chapters: Sequence[Chapter] = ()) -> bytes:
    """An ID3v2.3 tag with text frames for the known keys of `tags`, the
    picture (mime type, bytes) as the front cover, and the chapters.

    v2.3 rather than v2.4 because every player reads it. Text is Latin-1
    when it fits, else UTF-16 with a byte order mark (v2.3 has no UTF-8).
    """
    frames = b"".join(
        _text_frame(ID3_FRAMES[key], value)
        for key, value in tags.items()
        if key in ID3_FRAMES and value
    )
    if picture is not None:
        frames += _picture_frame(*picture)
    if chapters:
        frames += _chapter_frames(chapters)
    if not frames:
        return b""
    return b"ID3\x03\x00\x00" + _synchsafe(len(frames)) + frames


def _frame(frame_id: str, data: bytes) -> bytes:
    # v2.3 frame sizes are plain 32-bit integers (v2.4's are synchsafe).
    return frame_id.encode() + struct.pack(">IH", len(data), 0) + data


def _text_frame(frame_id: str, text: str) -> bytes:
    try:
        data = b"\x00" + text.encode("latin-1")
    except UnicodeEncodeError:
        data = b"\x01" + text.encode("utf-16")  # Python adds the BOM
    return _frame(frame_id, data)


def _picture_frame(mime: str, image: bytes) -> bytes:
    # Latin-1 text, the MIME type, the picture type, an empty description.
    return _frame("APIC", b"\x00" + mime.encode("latin-1") + b"\x00" + bytes((_FRONT_COVER,)) + b"\x00" + image)


def _chapter_frames(chapters: Sequence[Chapter]) -> bytes:
    """One CHAP per chapter (its title as a TIT2 subframe) and a CTOC listing
    them in order, so players show a table of contents."""
    ids = [f"ch{i}".encode() for i in range(len(chapters))]
    out = b""
    for element, ch in zip(ids, chapters, strict=True):
        # Byte offsets are "unknown" (all ones): players go by the times.
        body = element + b"\x00" + struct.pack(">IIII", max(0, ch.start_ms), max(ch.start_ms, ch.end_ms),
                                               0xFFFFFFFF, 0xFFFFFFFF)
        if ch.title:
            body += _text_frame("TIT2", ch.title)
        out += _frame("CHAP", body)
    listed = ids[:_MAX_CTOC_ENTRIES]
    toc = b"toc\x00" + bytes((_CTOC_TOP_ORDERED, len(listed))) + b"".join(e + b"\x00" for e in listed)
    return out + _frame("CTOC", toc)


def _synchsafe(n: int) -> bytes:
    return bytes(((n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F))
