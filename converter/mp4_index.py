"""Which bytes of an MP4/MOV file the audio conversion never needs.

An MP4 (ISO-BMFF) or QuickTime file keeps its sample tables in the `moov`
box: for every track, where each chunk of samples starts (stco/co64), how many
samples each chunk holds (stsc) and how big each sample is (stsz/stz2). From
them, skippable_ranges() works out the byte ranges that hold video samples and
nothing else, reading only the top-level box headers and the moov (a few
hundred KB for a 10-minute file), never the media data.

It is conservative, since a wrong range would feed zeros to the decoder: a
byte is skipped only if it lies in an `mdat` box and in a chunk of a video
track, and in no chunk of any other track (each kept chunk counts up to the
next chunk of any track, so padding or sizes we misread stay kept). Every
audio track is kept (PyAV picks one later), and so is every non-video track
FFmpeg may read while opening the file (timecode, chapters, metadata), and a
video track used as chapter pictures. Anything unusual gives None, "read
everything": a fragmented file (moof/mvex), no or several moov, tables that
disagree, samples past the end of the file or outside an mdat, data in
another file (dref), a parse error.

No library on PyPI does this without reading whole boxes (pymp4 parses mdat
too and pins an old `construct`); the tables needed are a handful of arrays.
"""
from __future__ import annotations

import bisect
import io
import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

Source = BinaryIO | io.RawIOBase  # seekable

Range = tuple[int, int]  # [start, end) in bytes

# First box types of the files this applies to (ISO-BMFF and QuickTime).
_LEADING = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}
# Top-level boxes of fragmented files: their samples are not in the moov.
_FRAGMENTED = {b"moof", b"mfra", b"styp", b"sidx", b"ssix"}
_MAX_TOP_BOXES = 256
_MAX_MOOV_BYTES = 128 << 20  # a 2-hour 60 fps video's tables are ~10 MB
_VIDEO, _SOUND = b"vide", b"soun"


class _Unusual(Exception):
    """Not a file we are sure about: read all of it."""


@dataclass
class _Track:
    track_id: int = 0
    handler: bytes = b""
    chapter_refs: list[int] = field(default_factory=list)  # tref/chap: tracks used as chapters
    chunks: list[Range] = field(default_factory=list)      # [offset, offset + sizes of its samples)


def skippable_ranges(f: Source) -> list[Range] | None:
    """Sorted, disjoint [start, end) ranges of `f` that hold only video
    samples; [] when there is nothing to skip, None when unsure (read all).
    `f` is a seekable binary file object; its position is restored."""
    pos = f.tell()
    try:
        return _skippable(f)
    except (_Unusual, struct.error):
        return None
    finally:
        f.seek(pos)


def _skippable(f: Source) -> list[Range]:
    length = f.seek(0, io.SEEK_END)
    mdats: list[Range] = []
    moov: bytes | None = None
    for i, (kind, payload, end) in enumerate(_top_boxes(f, length)):
        if i == 0 and kind not in _LEADING:
            raise _Unusual("not an MP4/MOV file")
        if i >= _MAX_TOP_BOXES or kind in _FRAGMENTED:
            raise _Unusual(kind)
        if kind == b"mdat":
            mdats.append((payload, end))
        elif kind == b"moov":
            if moov is not None or end - payload > _MAX_MOOV_BYTES:
                raise _Unusual("several or huge moov")
            f.seek(payload)
            moov = _read(f, end - payload)
    if moov is None or not mdats:
        raise _Unusual("no moov or no mdat")
    tracks = _tracks(moov)
    if not tracks:
        raise _Unusual("no tracks")
    chapters = {ref for t in tracks for ref in t.chapter_refs}
    skipped = [t for t in tracks if t.handler == _VIDEO and t.track_id not in chapters]
    kept = [t for t in tracks if t not in skipped]
    return _ranges(skipped, kept, mdats, length)


def _ranges(skipped: list[_Track], kept: list[_Track], mdats: list[Range], length: int) -> list[Range]:
    every = sorted(c for t in skipped + kept for c in t.chunks)
    if every and every[-1][1] > length:
        raise _Unusual("samples past the end of the file")
    starts = [s for s, _ in every]
    mdats.sort()
    # A kept chunk reaches at least to the next chunk of any track (or its mdat's end).
    keep = []
    for s, e in (c for t in kept for c in t.chunks):
        nxt = bisect.bisect_right(starts, s)
        limit = starts[nxt] if nxt < len(starts) else _containing(mdats, s, s)[1]
        keep.append((s, max(e, limit)))
    keep = _merge(keep)
    skip = _merge(c for t in skipped for c in t.chunks if c[1] > c[0])
    for s, e in skip:
        _containing(mdats, s, e)  # raises unless inside one mdat's payload
        i = bisect.bisect_right(keep, (s, float("inf"))) - 1
        if (i >= 0 and keep[i][1] > s) or (i + 1 < len(keep) and keep[i + 1][0] < e):
            raise _Unusual("video samples overlap kept ones")
    return skip


def _containing(mdats: list[Range], s: int, e: int) -> Range:
    i = bisect.bisect_right(mdats, (s, float("inf"))) - 1
    if i < 0 or not (mdats[i][0] <= s and e <= mdats[i][1]):
        raise _Unusual("samples outside mdat")
    return mdats[i]


def _merge(ranges) -> list[Range]:
    out: list[Range] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


# --- Boxes --------------------------------------------------------------------

def _read(f: Source, n: int) -> bytes:
    data = f.read(n)
    if data is None or len(data) != n:
        raise _Unusual("short read")
    return data


def _top_boxes(f: Source, length: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, end) of each top-level box, reading only headers."""
    pos = 0
    while pos < length:
        f.seek(pos)
        size, kind = struct.unpack(">I4s", _read(f, 8))
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", _read(f, 8))[0], 16
        elif size == 0:  # to the end of the file
            size = length - pos
        if size < header or pos + size > length:
            raise _Unusual("bad or truncated box")
        yield kind, pos + header, pos + size
        pos += size


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, end) of the boxes in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise _Unusual("bad box in moov")
        yield kind, pos + header, pos + size
        pos += size
    if any(data[pos:end]):  # QuickTime may end a list with 4 zero bytes, nothing else
        raise _Unusual("junk after boxes")


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    found = [(s, e) for k, s, e in _boxes(data, start, end) if k == kind]
    if len(found) > 1:
        raise _Unusual(f"several {kind!r}")
    return found[0] if found else None


def _tracks(moov: bytes) -> list[_Track]:
    tracks = []
    for kind, s, e in _boxes(moov):
        if kind == b"mvex":
            raise _Unusual("fragmented")
        if kind in (b"cmov", b"meco"):
            raise _Unusual("compressed or extra moov")
        if kind == b"trak":
            tracks.append(_track(moov, s, e))
    return tracks


def _track(d: bytes, s: int, e: int) -> _Track:
    t = _Track()
    tkhd = _child(d, s, e, b"tkhd")
    if tkhd is None:
        raise _Unusual("no tkhd")
    version = d[tkhd[0]]
    (t.track_id,) = struct.unpack_from(">I", d, tkhd[0] + (20 if version == 1 else 12))
    tref = _child(d, s, e, b"tref")
    if tref is not None:
        for kind, rs, re_ in _boxes(d, *tref):
            if kind == b"chap":
                t.chapter_refs += struct.unpack_from(f">{(re_ - rs) // 4}I", d, rs)
    mdia = _need(d, s, e, b"mdia")
    hdlr = _need(d, *mdia, b"hdlr")
    t.handler = d[hdlr[0] + 8:hdlr[0] + 12]
    minf = _need(d, *mdia, b"minf")
    dinf = _child(d, *minf, b"dinf")
    if dinf is not None:
        _check_self_contained(d, dinf)
    stbl = _need(d, *minf, b"stbl")
    t.chunks = _chunk_ranges(d, stbl)
    return t


def _need(d: bytes, s: int, e: int, kind: bytes) -> tuple[int, int]:
    found = _child(d, s, e, kind)
    if found is None:
        raise _Unusual(f"no {kind!r}")
    return found


def _check_self_contained(d: bytes, dinf: tuple[int, int]) -> None:
    """Every data reference must say "this file" (flag 1): else the chunk
    offsets point into another file."""
    dref = _child(d, *dinf, b"dref")
    if dref is None:
        return
    (count,) = struct.unpack_from(">I", d, dref[0] + 4)
    entries = list(_boxes(d, dref[0] + 8, dref[1]))
    if len(entries) != count:
        raise _Unusual("bad dref")
    for _kind, es, _ee in entries:
        if not int.from_bytes(d[es + 1:es + 4], "big") & 1:
            raise _Unusual("external data reference")


def _chunk_ranges(d: bytes, stbl: tuple[int, int]) -> list[Range]:
    offsets = _chunk_offsets(d, stbl)
    sizes = _sample_sizes(d, stbl)
    s, _e = _need(d, *stbl, b"stsc")
    (n,) = struct.unpack_from(">I", d, s + 4)
    stsc = [struct.unpack_from(">III", d, s + 8 + 12 * i)[:2] for i in range(n)]
    if offsets and (not stsc or stsc[0][0] != 1):
        raise _Unusual("bad stsc")
    cumulative = list(itertools.accumulate(sizes, initial=0))  # [i]: bytes before sample i
    ranges, sample = [], 0
    for i, (first, per_chunk) in enumerate(stsc):
        last = stsc[i + 1][0] if i + 1 < len(stsc) else len(offsets) + 1
        if last <= first or first > len(offsets) + 1:
            raise _Unusual("bad stsc")
        for chunk in range(first, last):
            if sample + per_chunk > len(sizes):
                raise _Unusual("stsc counts more samples than stsz")
            start = offsets[chunk - 1]
            ranges.append((start, start + cumulative[sample + per_chunk] - cumulative[sample]))
            sample += per_chunk
    if sample != len(sizes):
        raise _Unusual("stsc and stsz disagree")
    return ranges


def _chunk_offsets(d: bytes, stbl: tuple[int, int]) -> tuple[int, ...]:
    stco, co64 = _child(d, *stbl, b"stco"), _child(d, *stbl, b"co64")
    if (stco is None) == (co64 is None):
        raise _Unusual("need exactly one of stco/co64")
    s, e = stco or co64  # type: ignore[misc]  # one of them, checked above
    width = "I" if stco else "Q"
    (n,) = struct.unpack_from(">I", d, s + 4)
    if s + 8 + n * struct.calcsize(width) > e:
        raise _Unusual("short chunk offset table")
    return struct.unpack_from(f">{n}{width}", d, s + 8)


def _sample_sizes(d: bytes, stbl: tuple[int, int]) -> list[int] | tuple[int, ...]:
    stsz, stz2 = _child(d, *stbl, b"stsz"), _child(d, *stbl, b"stz2")
    if (stsz is None) == (stz2 is None):
        raise _Unusual("need exactly one of stsz/stz2")
    if stsz is not None:
        s, e = stsz
        uniform, n = struct.unpack_from(">II", d, s + 4)
        if uniform:
            return [uniform] * n
        if s + 12 + 4 * n > e:
            raise _Unusual("short stsz")
        return struct.unpack_from(f">{n}I", d, s + 12)
    s, e = stz2  # type: ignore[misc]
    bits = d[s + 7]
    (n,) = struct.unpack_from(">I", d, s + 8)
    table = d[s + 12:e]
    if bits == 16 and len(table) >= 2 * n:
        return struct.unpack_from(f">{n}H", table)
    if bits == 8 and len(table) >= n:
        return list(table[:n])
    if bits == 4 and len(table) >= (n + 1) // 2:
        return [(table[i // 2] >> (4 if i % 2 == 0 else 0)) & 15 for i in range(n)]
    raise _Unusual("bad stz2")
