"""ISO base media file format (MP4, M4A, 3GP) and QuickTime (MOV) boxes.

A file is a sequence of boxes ("atoms" in QuickTime), and a container box's
payload is a sequence of boxes the same way (ISO/IEC 14496-12, 4.2). A box
starts with a 32-bit big-endian size, its header included, and a four-byte
type. Size 1: a 64-bit size follows the type (a 16-byte header); size 0: the
box runs to the end of what holds it (for a top-level box, the file).

    read_header(data, pos, end)   the box whose header is at data[pos:]
    boxes(data, start, end)       the boxes of a payload held in memory
    file_boxes(f, length)         a file's top-level boxes, reading only their headers
    prefix_boxes(head)            the boxes whose headers lie in a file's first bytes
    child(data, start, end, kind) the one box of a type among a payload's
    header(kind, payload_size)    a box header to write

Each returns Box(kind, start, payload, end) in its caller's coordinates, and
raises BoxError for a header that cannot be right. What a box means is its
user's business, but for LEADING: the types a file may start with.
"""
from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

HEADER_SIZE = 8        # size and type
LARGE_HEADER_SIZE = 16  # with a 64-bit size
_LARGE = b"\x00\x00\x00\x01"

# The box types an ISO-BMFF or QuickTime file may begin with: its type, free
# space, a progressive-download hint, a segment's type, or the movie itself.
LEADING = frozenset({b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"pdin",
                     b"junk", b"pnot"})


class BoxError(ValueError):
    """A box header that cannot be right: a size smaller than the header, a
    box running past what holds it, or junk after the last box."""


@dataclass(frozen=True, slots=True)
class Box:
    kind: bytes       # the four-byte type, e.g. b"moov"
    start: int        # of its header
    payload: int      # the first byte after its header
    end: int | None   # one past its last byte; None: "to the end of the file", whose length is unknown


def read_header(data: bytes, pos: int = 0, end: int | None = None) -> Box | None:
    """The box whose header is at data[pos:], in a space that ends at `end`
    (None: unknown; data may then hold only a prefix of it). None when data
    holds too little of the header to tell (8 bytes, 16 with a 64-bit size).
    Raises BoxError for a size smaller than the header or past `end`."""
    if len(data) < pos + HEADER_SIZE:
        return None
    size, kind = struct.unpack_from(">I4s", data, pos)
    header = HEADER_SIZE
    if size == 1:
        if len(data) < pos + LARGE_HEADER_SIZE:
            return None
        size, header = struct.unpack_from(">Q", data, pos + HEADER_SIZE)[0], LARGE_HEADER_SIZE
    elif size == 0:
        if end is None:
            return Box(kind, pos, pos + header, None)
        size = end - pos
    if size < header or (end is not None and pos + size > end):
        raise BoxError(f"box {kind!r} at {pos}: size {size} does not fit")
    return Box(kind, pos, pos + header, pos + size)


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[Box]:
    """The boxes laid end to end in data[start:end]. Raises BoxError for a
    bad size and for anything after the last box but zero bytes (QuickTime
    may end a list with four)."""
    end = len(data) if end is None else end
    pos = start
    while pos + HEADER_SIZE <= end:
        box = read_header(data, pos, end)
        if box is None:
            raise BoxError(f"box header cut short at {pos}")
        assert box.end is not None  # end is known, so is every box's
        yield box
        pos = box.end
    if any(data[pos:end]):
        raise BoxError(f"junk after the boxes at {pos}")


def file_boxes(f: BinaryIO, length: int) -> Iterator[Box]:
    """The top-level boxes of a seekable binary file of `length` bytes,
    reading only their headers. Raises BoxError for a bad size and for a file
    that ends inside a header."""
    pos = 0
    while pos < length:
        f.seek(pos)
        head = f.read(HEADER_SIZE) or b""
        if head[:4] == _LARGE:
            head += f.read(LARGE_HEADER_SIZE - HEADER_SIZE) or b""
        box = read_header(head, 0, length - pos)
        if box is None:
            raise BoxError(f"the file ends inside a box header at {pos}")
        assert box.end is not None  # the length is known, so is every box's end
        yield _moved(box, pos)
        pos += box.end


def prefix_boxes(head: bytes) -> Iterator[Box]:
    """The boxes whose headers lie in `head`, the first bytes of a file of
    unknown length, up to the first header that is not all there. A box of
    size 0 (to the end of the file) has end None and is the last. Raises
    BoxError for a bad size."""
    pos = 0
    while (box := read_header(head, pos)) is not None:
        yield box
        if box.end is None:
            return
        pos = box.end


def child(data: bytes, start: int, end: int, kind: bytes) -> Box | None:
    """The box of type `kind` among those in data[start:end], None if there
    is none; BoxError if there are several."""
    found = [b for b in boxes(data, start, end) if b.kind == kind]
    if len(found) > 1:
        raise BoxError(f"several {kind!r} boxes")
    return found[0] if found else None


def header(kind: bytes, payload_size: int, *, large: bool = False) -> bytes:
    """The header of a box of type `kind` holding payload_size bytes; `large`:
    with a 64-bit size, for a box that may pass 4 GB."""
    if large:
        return struct.pack(">I4sQ", 1, kind, LARGE_HEADER_SIZE + payload_size)
    return struct.pack(">I4s", HEADER_SIZE + payload_size, kind)


def _moved(box: Box, by: int) -> Box:
    return dataclasses.replace(box, start=box.start + by, payload=box.payload + by,
                               end=None if box.end is None else box.end + by)
