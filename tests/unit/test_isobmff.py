"""formats/isobmff.py: the one MP4/MOV box walker, on hand-made boxes (real
files go through it in test_mp4_index.py, test_container_sniff.py and
test_mp4_layout.py)."""
from __future__ import annotations

import io
import struct

import pytest

from video2mp3.formats import isobmff
from video2mp3.formats.isobmff import Box, BoxError


def box(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def kinds(found) -> list[bytes]:
    return [b.kind for b in found]


def test_header_sizes():
    assert isobmff.read_header(box(b"free", b"abcd")) == Box(b"free", 0, 8, 12)
    large = struct.pack(">I4sQ", 1, b"mdat", 16 + 3) + b"xyz"
    assert isobmff.read_header(large) == Box(b"mdat", 0, 16, 19)
    # Size 0: to the end of what holds it, unknown for a file's first bytes.
    zero = struct.pack(">I4s", 0, b"mdat") + b"rest"
    assert isobmff.read_header(zero, 0, 100) == Box(b"mdat", 0, 8, 100)
    assert isobmff.read_header(zero) == Box(b"mdat", 0, 8, None)
    # Too few bytes to tell.
    assert isobmff.read_header(b"\x00\x00\x00\x10fre") is None
    assert isobmff.read_header(large[:12]) is None


@pytest.mark.parametrize("bad", [
    struct.pack(">I4s", 7, b"free"),               # smaller than its header
    struct.pack(">I4sQ", 1, b"mdat", 12),           # smaller than its 16-byte header
])
def test_impossible_sizes(bad):
    with pytest.raises(BoxError):
        isobmff.read_header(bad)


def test_a_box_past_its_parents_end():
    with pytest.raises(BoxError):
        isobmff.read_header(box(b"free", b"abcd"), 0, 10)


def test_boxes_in_memory_and_children():
    moov = box(b"mvhd", b"x" * 4) + box(b"trak", box(b"tkhd", b"t")) + box(b"trak")
    data = box(b"moov", moov)
    (top,) = isobmff.boxes(data)
    assert top == Box(b"moov", 0, 8, len(data))
    assert kinds(isobmff.boxes(data, top.payload, top.end)) == [b"mvhd", b"trak", b"trak"]
    assert isobmff.child(data, 8, len(data), b"mvhd") == Box(b"mvhd", 8, 16, 20)
    assert isobmff.child(data, 8, len(data), b"udta") is None
    with pytest.raises(BoxError, match="several"):
        isobmff.child(data, 8, len(data), b"trak")


def test_zeros_may_end_a_list_junk_may_not():
    assert kinds(isobmff.boxes(box(b"free") + bytes(4))) == [b"free"]
    with pytest.raises(BoxError):
        list(isobmff.boxes(box(b"free") + b"\x00\x01"))
    with pytest.raises(BoxError):
        list(isobmff.boxes(box(b"free") + struct.pack(">I4s", 1, b"mdat")))  # 64-bit size cut off


class CountingFile(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0

    def read(self, n=-1):
        data = super().read(n)
        self.read_bytes += len(data)
        return data


def test_file_boxes_read_only_headers():
    data = (box(b"ftyp", b"isom") + struct.pack(">I4sQ", 1, b"mdat", 16 + 5000) + bytes(5000)
            + box(b"moov", b"m" * 100) + struct.pack(">I4s", 0, b"free") + bytes(20))
    f = CountingFile(data)
    found = list(isobmff.file_boxes(f, len(data)))
    assert kinds(found) == [b"ftyp", b"mdat", b"moov", b"free"]
    assert found[1] == Box(b"mdat", 12, 28, 5028)
    assert found[-1].end == len(data)  # size 0: to the end of the file
    assert f.read_bytes == 8 + 16 + 8 + 8


def test_a_file_cut_inside_a_box_or_a_header():
    data = box(b"ftyp", b"isom") + box(b"mdat", bytes(100))
    with pytest.raises(BoxError):
        list(isobmff.file_boxes(io.BytesIO(data[:50]), 50))
    with pytest.raises(BoxError):
        list(isobmff.file_boxes(io.BytesIO(data + b"\x00\x00"), len(data) + 2))


def test_prefix_boxes_stop_where_the_head_does():
    head = box(b"ftyp", b"isom") + struct.pack(">I4s", 1000, b"free") + bytes(20)
    assert kinds(isobmff.prefix_boxes(head)) == [b"ftyp", b"free"]  # free's end lies beyond the head
    head = box(b"ftyp", b"isom") + struct.pack(">I4s", 0, b"mdat") + box(b"moov")
    assert [(b.kind, b.end) for b in isobmff.prefix_boxes(head)] == [(b"ftyp", 12), (b"mdat", None)]


def test_written_headers_read_back():
    assert isobmff.read_header(isobmff.header(b"stsc", 20)) == Box(b"stsc", 0, 8, 28)
    assert isobmff.read_header(isobmff.header(b"mdat", 5 << 30, large=True)) == Box(b"mdat", 0, 16, 16 + (5 << 30))
