"""Joining two MP3 encodings of the same audio at a frame, without a glitch.

Two LAME encoders can encode the two halves of a track at once (two cores)
when each is fed some audio past its half: the first a little after, the
second a little before. Their outputs describe the same sound in the overlap,
so frames 0..J-1 of the first followed by frames J.. of the second play as one
stream, provided the join frame J is chosen where a decoder cannot tell.
Layer III has exactly two links between frames (ISO 11172-3, 2.4.2.7 and
2.4.3.4):

* The bit reservoir. A frame's main data may start up to 511 bytes before the
  frame, in the unused tail of earlier frames' data areas (`main_data_begin`
  says how far). Frame J of the second stream needs its `main_data_begin`
  bytes from that stream's earlier frames, which are not kept; they are
  copied into the tail of the first stream's kept frames. That tail is free
  exactly when frame J of the *first* stream starts at least as far back:
  LAME writes main data without gaps, so the bytes before its frame J's data
  belong to no earlier frame.
* Window shapes. The decoder overlaps each granule with the previous one,
  which only cancels the MDCT's aliasing when the windows match (long, start,
  short, stop). Both encoders decided frame J's first granule the same way
  iff its block types are the same in both streams.

find_join() picks the first J in a window where both hold; splice() makes the
bytes. Pure byte work, tested alone (tests/unit/test_split_encode.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from video2mp3.formats import mpeg_audio
from video2mp3.formats.mpeg_audio import FrameHeader


@dataclass(frozen=True)
class Frame:
    offset: int              # of the header in its buffer
    length: int
    data_start: int          # first byte of the data area (after header, CRC, side info)
    main_data_begin: int     # bytes of reservoir the frame's main data starts before data_start
    first_blocks: tuple[tuple[int, int, int], ...]  # granule 0, per channel: (switched, type, mixed)


class _Bits:
    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = len(data) * 8

    def take(self, n: int) -> int:
        self._left -= n
        return (self._value >> self._left) & ((1 << n) - 1)


def parse_frame(buf: bytes, offset: int, header: FrameHeader) -> Frame:
    """The fields of the frame at buf[offset:] that joining depends on."""
    crc = 0 if header.raw[1] & 1 else 2  # protection bit clear: a 16-bit CRC follows
    side = offset + 4 + crc
    bits = _Bits(buf[side:side + header.side_info_size])
    channels = 1 if header.channel_mode == 3 else 2
    if header.lsf:
        main_data_begin = bits.take(8)
        bits.take(1 if channels == 1 else 2)          # private bits
    else:
        main_data_begin = bits.take(9)
        bits.take(5 if channels == 1 else 3)          # private bits
        bits.take(4 * channels)                       # scfsi
    blocks = []
    for _ in range(channels):                         # granule 0 only
        bits.take(12 + 9 + 8)                         # part2_3_length, big_values, global_gain
        bits.take(9 if header.lsf else 4)             # scalefac_compress
        switched = bits.take(1)
        if switched:
            block_type, mixed = bits.take(2), bits.take(1)
            bits.take(10 + 9)                         # table_select, subblock_gain
        else:
            block_type, mixed = 0, 0
            bits.take(15 + 4 + 3)                     # table_select, region0/1_count
        bits.take(2 if header.lsf else 3)             # (preflag,) scalefac_scale, count1table_select
        blocks.append((switched, block_type, mixed))
    return Frame(offset, header.length, side + header.side_info_size, main_data_begin, tuple(blocks))


class Frames:
    """The whole frames of an encoder's output (which starts at a frame
    header): where each one is, and its fields when asked (parsing every
    frame's side info in Python would cost more than the join is worth)."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self._at: list[tuple[int, FrameHeader]] = list(mpeg_audio.frames(buf))
        self._parsed: dict[int, Frame] = {}

    def __len__(self) -> int:
        return len(self._at)

    def __getitem__(self, i: int) -> Frame:
        if not 0 <= i < len(self._at):
            raise IndexError(i)
        if i not in self._parsed:
            self._parsed[i] = parse_frame(self.buf, *self._at[i])
        return self._parsed[i]


def joinable(a: Frame, b: Frame) -> bool:
    """Whether frame b (second stream) can follow the first stream's frames
    before a (the first stream's frame at the same position)."""
    return b.first_blocks == a.first_blocks and b.main_data_begin <= a.main_data_begin


def find_join(a: Frames, a_base: int, b: Frames, b_base: int, lo: int, hi: int) -> int | None:
    """The first frame number J in [lo, hi) at which the stream whose frame i
    is number a_base + i can hand over to the one whose frame i is b_base + i.
    Frame numbers count from the start of the track, in the same grid."""
    for j in range(max(lo, a_base, b_base), hi):
        if j - a_base >= len(a) or j - b_base >= len(b):
            return None
        if joinable(a[j - a_base], b[j - b_base]):
            return j
    return None


def splice(a: Frames, a_index: int, b: Frames, b_index: int) -> bytes:
    """The first stream's frames before a_index, with the reservoir that the
    second stream's frame b_index needs moved into their tail (which
    joinable() checked is free). That frame and the ones after it follow
    unchanged: b.buf[b[b_index].offset:]."""
    head = bytearray(a.buf[:a[a_index].offset])
    reservoir = bytearray()
    need = b[b_index].main_data_begin
    i = b_index
    while len(reservoir) < need and i > 0:        # the last `need` data-area bytes before it
        i -= 1
        reservoir[:0] = b.buf[b[i].data_start:b[i].offset + b[i].length]
    if len(reservoir) < need:
        raise ValueError("the frame needs more reservoir than the frames before it hold")
    del reservoir[:len(reservoir) - need]
    i = a_index
    while reservoir and i > 0:                    # into the head's last data-area bytes
        i -= 1
        end = a[i].offset + a[i].length
        n = min(end - a[i].data_start, len(reservoir))
        head[end - n:end] = reservoir[len(reservoir) - n:]
        del reservoir[len(reservoir) - n:]
    if reservoir:
        raise ValueError("the first stream's frames hold less data area than the reservoir needs")
    return bytes(head)
