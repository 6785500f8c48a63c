"""MPEG audio frame headers (ISO 11172-3, 13818-3), and ADTS's beside them.

An MPEG audio stream is a sequence of frames, each starting with a 4-byte
header: an 11-bit sync, version, layer, bitrate, sample rate, padding and
channel mode. Layer III (MP3) headers are parsed in full; any layer's is
recognised, and so is an ADTS header (AAC), which shares the sync bits.

    parse_header(b)     Layer III FrameHeader in b's first 4 bytes, or None
    frames(buf)         the whole Layer III frames laid end to end from buf[0]
    is_frame_header(b)  any layer's valid header at b[0]
    is_adts_header(b)   an ADTS header at b[0]
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

# Bitrates (kbps) by index for Layer III: MPEG-1, then MPEG-2 and 2.5 (LSF).
_BITRATES = {
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
# Sample rates by index, for each version id (bits 19-20 of the header).
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_LAYER_III = 1  # the layer bits' value for Layer III


@dataclass(frozen=True)
class FrameHeader:
    raw: bytes          # the 4 header bytes
    version_id: int     # 3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5
    bitrate_kbps: int
    sample_rate: int
    padding: int
    channel_mode: int   # 0 stereo, 1 joint stereo, 2 dual channel, 3 mono

    @property
    def lsf(self) -> bool:
        """Low sampling frequency (MPEG-2/2.5): half-size frames and side info."""
        return self.version_id != 3

    @property
    def samples_per_frame(self) -> int:
        return 576 if self.lsf else 1152

    @property
    def length(self) -> int:
        """Bytes in the frame, header included."""
        coef = 72 if self.lsf else 144
        return coef * self.bitrate_kbps * 1000 // self.sample_rate + self.padding

    @property
    def side_info_size(self) -> int:
        mono = self.channel_mode == 3
        if self.lsf:
            return 9 if mono else 17
        return 17 if mono else 32

    @property
    def bitrates(self) -> tuple[int, ...]:
        """The bitrates (kbps) a frame of this version may have, lowest first."""
        return _BITRATES[2 if self.lsf else 1][1:]


def samples_per_frame(sample_rate: int) -> int:
    """Samples in a Layer III frame at `sample_rate` (MPEG-1 rates: 1152)."""
    return 1152 if sample_rate >= 32000 else 576


def parse_header(b: bytes) -> FrameHeader | None:
    """The Layer III frame header in the first 4 bytes of b, or None."""
    return _header(bytes(b[:4])) if len(b) >= 4 else None


def frames(buf: bytes) -> Iterator[tuple[int, FrameHeader]]:
    """(offset, header) of the whole Layer III frames laid end to end from
    buf[0], up to the first that is not one or is cut short."""
    pos = 0
    while (header := parse_header(buf[pos:pos + 4])) is not None and pos + header.length <= len(buf):
        yield pos, header
        pos += header.length


def with_bitrate(header: FrameHeader, kbps: int) -> FrameHeader:
    """The same header with another bitrate, no padding and no CRC."""
    table = _BITRATES[2 if header.lsf else 1]
    raw = bytes((
        0xFF,
        header.raw[1] | 0x01,                                  # protection bit set: no CRC
        (table.index(kbps) << 4) | (header.raw[2] & 0x0C),     # keep rate, clear padding/private
        header.raw[3] & 0xCF,                                  # clear mode extension
    ))
    new = parse_header(raw)
    assert new is not None, "a valid header with a valid bitrate parses"
    return new


def is_frame_header(b: bytes) -> bool:
    """Whether b starts with a valid MPEG audio frame header, of any layer."""
    return len(b) >= 4 and _fields(bytes(b[:4])) is not None


def is_adts_header(b: bytes) -> bool:
    """Whether b starts with an ADTS header (AAC): sync 0xFFF, layer 00."""
    return len(b) >= 2 and b[0] == 0xFF and b[1] & 0xF6 == 0xF0


def _fields(b: bytes) -> tuple[int, int, int, int] | None:
    """(version id, layer bits, bitrate index, rate index) of a valid header."""
    if b[0] != 0xFF or (b[1] & 0xE0) != 0xE0:
        return None
    version_id = (b[1] >> 3) & 3
    layer = (b[1] >> 1) & 3
    bitrate_index = b[2] >> 4
    rate_index = (b[2] >> 2) & 3
    if version_id == 1 or layer == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None  # reserved, free format or invalid
    return version_id, layer, bitrate_index, rate_index


@lru_cache(maxsize=4096)  # a stream repeats a handful of distinct headers
def _header(b: bytes) -> FrameHeader | None:
    fields = _fields(b)
    if fields is None or fields[1] != _LAYER_III:
        return None
    version_id, _layer, bitrate_index, rate_index = fields
    return FrameHeader(
        raw=b,
        version_id=version_id,
        bitrate_kbps=_BITRATES[1 if version_id == 3 else 2][bitrate_index],
        sample_rate=_RATES[version_id][rate_index],
        padding=(b[2] >> 1) & 1,
        channel_mode=b[3] >> 6,
    )
