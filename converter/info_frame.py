"""The Xing/LAME info frame: what players read to seek in an MP3 and play it gapless.

Written from the "Mp3 Info Tag rev 1" spec. LAME, as the converter drives it
(converter/lame.py), emits bare MP3 frames; the first frame of the file is
then an info frame (converter/mp3out.py writes it):

  [ID3v2 tag] [info frame: Xing/Info header + LAME tag] [audio frames ...]

It carries the frame count, byte count, seek table (TOC), the encoder
delay/padding that players trim to play the file gapless, and two CRC-16s.
Most of it is known only at the end, so FrameScanner and MusicCrc follow the
audio as it is written, and build_info_frame() is called twice: for a
placeholder, then for the real frame of the same size.

read_lame_tag() reads a source MP3's own tag (the copy path keeps its delay
and padding).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from video2mp3.converter.id3 import id3v2_size
from video2mp3.formats.mpeg_audio import FrameHeader, parse_header, with_bitrate

# LAME's encoder delay: samples of silence it puts before the audio. The
# decoder adds 528 + 1 more; FFmpeg skips delay + 529 when the tag says so.
LAME_ENCODER_DELAY = 576
DECODER_DELAY = 529


# --- CRC-16 (the "ARC" variant: poly 0x8005 reflected, init 0) -------------
# The LAME tag stores one over the tag itself and one over all audio frames.

def _make_crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _make_crc_table()


def crc16(data: bytes, crc: int = 0) -> int:
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


class MusicCrc:
    """CRC-16 over a long byte stream, fed in pieces, without a per-byte Python loop.

    The CRC is linear, so a block's CRC is the XOR of one contribution per
    byte position. For each position k, bytes.translate maps the k-th byte of
    every block at once to its contribution's low and high byte (two 256-byte
    tables), and Python's big integers XOR those columns together, all in C.
    The running CRC is then carried across blocks by a fixed linear map, one
    small step per block. A byte-by-byte loop would cost seconds on a long file.
    """

    BLOCK = 64
    _tables = None  # built once per process, shared by all instances

    def __init__(self) -> None:
        if MusicCrc._tables is None:
            MusicCrc._tables = self._build_tables(self.BLOCK)
        self._lo, self._hi, self._carry_lo, self._carry_hi = MusicCrc._tables
        self._pending: list[bytes] = []  # not yet summed: under BATCH bytes
        self._pending_bytes = 0
        self.value = 0

    @staticmethod
    def _build_tables(n: int) -> tuple[list[bytes], list[bytes], list[int], list[int]]:
        lo_rows: list[bytes] = [b""] * n
        hi_rows: list[bytes] = [b""] * n
        row = list(_CRC_TABLE)  # a byte followed by no more bytes
        for k in range(n - 1, -1, -1):
            lo_rows[k] = bytes(c & 0xFF for c in row)
            hi_rows[k] = bytes(c >> 8 for c in row)
            row = [(c >> 8) ^ _CRC_TABLE[c & 0xFF] for c in row]  # ... followed by one more zero byte
        # carry[v]: where a register value v ends up after n zero bytes (by halves).
        carry_lo, carry_hi = list(range(256)), [v << 8 for v in range(256)]
        for _ in range(n):
            carry_lo = [(c >> 8) ^ _CRC_TABLE[c & 0xFF] for c in carry_lo]
            carry_hi = [(c >> 8) ^ _CRC_TABLE[c & 0xFF] for c in carry_hi]
        return lo_rows, hi_rows, carry_lo, carry_hi

    # Pieces are summed in batches: the work per call is fixed (two translates
    # per position), so frame-sized pieces one by one would cost 10x more.
    BATCH = 64 * 1024

    def update(self, data: bytes) -> None:
        self._pending.append(bytes(data))
        self._pending_bytes += len(data)
        if self._pending_bytes >= self.BATCH:
            self._sum(b"".join(self._pending))

    def _sum(self, data: bytes) -> None:
        """Folds the whole blocks of `data` into the CRC; keeps the rest pending."""
        whole = len(data) - len(data) % self.BLOCK
        rest = data[whole:]
        self._pending, self._pending_bytes = [rest], len(rest)
        blocks = whole // self.BLOCK
        if not blocks:
            return
        acc_lo = acc_hi = 0
        for k in range(self.BLOCK):
            column = data[k:whole:self.BLOCK]  # the k-th byte of every block
            acc_lo ^= int.from_bytes(column.translate(self._lo[k]), "little")
            acc_hi ^= int.from_bytes(column.translate(self._hi[k]), "little")
        crc, lo, hi = self.value, self._carry_lo, self._carry_hi
        for b_lo, b_hi in zip(acc_lo.to_bytes(blocks, "little"), acc_hi.to_bytes(blocks, "little"), strict=True):
            crc = lo[crc & 0xFF] ^ hi[crc >> 8] ^ b_lo ^ (b_hi << 8)
        self.value = crc

    def digest(self) -> int:
        self._sum(b"".join(self._pending))
        return crc16(b"".join(self._pending), self.value)


# --- Frame scanning ---------------------------------------------------------

class FrameScanner:
    """Follows MP3 frame boundaries in a byte stream that arrives in pieces.

    Counts frames and remembers the byte offset of every `stride`-th frame for
    the seek table; when that list gets long it keeps every other entry and
    doubles the stride, so memory stays bounded however long the file is.
    """

    MAX_MARKS = 2048

    def __init__(self) -> None:
        self.first: FrameHeader | None = None
        self.frames = 0
        self.bytes = 0
        self.min_kbps = self.max_kbps = 0
        self.marks: list[tuple[int, int]] = []  # (frame index, byte offset)
        self._stride = 1
        self._next = 0        # offset of the next frame header
        self._tail = b""      # bytes of a header split across two pieces

    def feed(self, data: bytes) -> None:
        base = self.bytes - len(self._tail)
        buf = self._tail + data if self._tail else data
        self.bytes += len(data)
        end = self.bytes
        while self._next + 4 <= end:
            i = self._next - base
            header = parse_header(buf[i:i + 4])
            if header is None:
                self._next += 1  # lost sync (junk between frames): search on
                continue
            self._on_frame(header)
            self._next += header.length
        keep = max(0, end - max(self._next, end - 3))
        self._tail = bytes(buf[len(buf) - keep:]) if keep else b""

    def _on_frame(self, header: FrameHeader) -> None:
        if self.first is None:
            self.first = header
        kbps = header.bitrate_kbps
        if self.min_kbps == 0 or kbps < self.min_kbps:
            self.min_kbps = kbps
        if kbps > self.max_kbps:
            self.max_kbps = kbps
        if self.frames % self._stride == 0:
            self.marks.append((self.frames, self._next))
            if len(self.marks) > self.MAX_MARKS:
                self.marks = self.marks[::2]
                self._stride *= 2
        self.frames += 1

    def offset_of_frame(self, frame: float) -> float:
        """Byte offset where frame number `frame` starts, interpolated."""
        marks = self.marks
        lo, hi = 0, len(marks) - 1
        while lo < hi:  # last mark at or before `frame`
            mid = (lo + hi + 1) // 2
            if marks[mid][0] <= frame:
                lo = mid
            else:
                hi = mid - 1
        f0, o0 = marks[lo]
        f1, o1 = marks[lo + 1] if lo + 1 < len(marks) else (self.frames, self.bytes)
        return o0 + (o1 - o0) * (frame - f0) / max(1, f1 - f0)


# --- The info frame (Xing/Info header + LAME tag) ---------------------------

@dataclass(frozen=True)
class InfoFrameParams:
    vbr: bool
    bitrate_kbps: int        # CBR bitrate (or VBR minimum) for the tag
    preset: int              # LAME preset id: CBR bitrate, or 500 - 10*V for VBR
    quality: int             # LAME's algorithm quality (-q)
    vbr_quality: int = 4
    source_rate: int = 44100
    encoder: bytes = b"LAME3.100"


def info_frame_header(first: FrameHeader, min_size: int) -> FrameHeader:
    """Header for the info frame: the stream's first header at the stream's
    bitrate (CBR seeking assumes every frame has the same size), or at the
    lowest bitrate whose frame holds the tag when that one is too small.

    It depends on nothing learnt later, so the placeholder written first and
    the final frame always have the same size.
    """
    for kbps in [first.bitrate_kbps, *first.bitrates]:
        header = with_bitrate(first, kbps)
        if header.length >= min_size:
            return header
    raise ValueError("no bitrate holds the info frame")


def _lame_tag_offset(header: FrameHeader) -> int:
    # header, side info, "Xing", flags, frames, bytes, TOC (100), quality
    return 4 + header.side_info_size + 4 + 4 + 4 + 4 + 100 + 4


def build_info_frame(first: FrameHeader, params: InfoFrameParams, *, frames: int = 0,
                     music_bytes: int = 0, toc: bytes = bytes(100), delay: int = 0,
                     padding: int = 0, music_crc: int = 0) -> bytes:
    """The Xing ("Info" for CBR) frame with a LAME tag.

    music_bytes counts the audio frames after this one; the tag's byte count
    and music length include this frame too, as LAME's do.
    """
    header = info_frame_header(first, _lame_tag_offset(first) + 36)
    size = header.length
    total = size + music_bytes
    xing = b"".join((
        header.raw,
        bytes(header.side_info_size),
        b"Xing" if params.vbr else b"Info",
        struct.pack(">III", 0x0F, frames, total),  # flags: frames, bytes, TOC, quality present
        toc,
        struct.pack(">I", max(0, 100 - 10 * params.vbr_quality - params.quality)),
    ))
    lame = b"".join((
        params.encoder[:9].ljust(9, b" "),
        bytes(((0 << 4) | (4 if params.vbr else 1),)),    # tag revision 0, VBR method
        bytes(1),                                          # lowpass: unknown
        bytes(4 + 2 + 2),                                  # peak, radio and audiophile gain: none
        bytes(1),                                          # encoding flags, ATH type
        bytes((min(255, params.bitrate_kbps),)),
        _delay_padding(delay, padding),
        bytes((_misc_byte(header.channel_mode, params.source_rate),)),
        bytes(1),                                          # MP3 gain
        struct.pack(">H", params.preset & 0x7FF),          # preset, no surround
        struct.pack(">I", total),                          # music length
        struct.pack(">H", music_crc),
    ))
    body = xing + lame
    body += struct.pack(">H", crc16(body))                 # CRC of everything before it
    return body + bytes(size - len(body))


def _delay_padding(delay: int, padding: int) -> bytes:
    delay = min(max(delay, 0), 4095)
    padding = min(max(padding, 0), 4095)
    v = (delay << 12) | padding
    return bytes(((v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF))


def _misc_byte(channel_mode: int, source_rate: int) -> int:
    stereo_mode = {0: 1, 1: 3, 2: 2, 3: 0}[channel_mode]  # tag's own numbering
    if source_rate <= 32000:
        freq = 0
    elif source_rate <= 44100:
        freq = 1
    elif source_rate <= 48000:
        freq = 2
    else:
        freq = 3
    return (freq << 6) | (stereo_mode << 2)


def build_toc(scanner: FrameScanner) -> bytes:
    """The Xing seek table: where each 1 % of the playing time starts, in
    256ths of the audio bytes (after the info frame, as LAME counts)."""
    total = max(1, scanner.bytes)
    toc = bytearray(100)
    for i in range(100):
        offset = scanner.offset_of_frame(i * scanner.frames / 100)
        toc[i] = min(255, int(256 * offset / total))
    return bytes(toc)


@dataclass(frozen=True)
class LameTag:
    encoder: bytes
    delay: int
    padding: int


def read_lame_tag(head: bytes) -> LameTag | None:
    """The encoder delay/padding of an MP3 file, from its first bytes."""
    pos = id3v2_size(head)
    header = parse_header(head[pos:pos + 4])
    if header is None:
        return None
    at = pos + 4 + header.side_info_size
    if head[at:at + 4] not in (b"Xing", b"Info"):
        return None
    flags = struct.unpack(">I", head[at + 4:at + 8])[0]
    at += 8 + 4 * bool(flags & 1) + 4 * bool(flags & 2) + 100 * bool(flags & 4) + 4 * bool(flags & 8)
    tag = head[at:at + 36]
    if len(tag) < 24 or tag[:4] not in (b"LAME", b"Lavf", b"Lavc"):
        return None
    v = int.from_bytes(tag[21:24], "big")
    return LameTag(encoder=bytes(tag[:9]), delay=v >> 12, padding=v & 0xFFF)
