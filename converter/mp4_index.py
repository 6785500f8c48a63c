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
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from video2mp3.formats import isobmff
from video2mp3.formats.isobmff import BoxError
from video2mp3.storage.gridfs_download import Range, merge_ranges

Source = BinaryIO | io.RawIOBase  # seekable
Span = tuple[int, int]  # a box's payload: [start, end) in the moov's bytes

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
    except (_Unusual, BoxError, struct.error):
        return None
    finally:
        f.seek(pos)


def _skippable(f: Source) -> list[Range]:
    length = f.seek(0, io.SEEK_END)
    mdats: list[Range] = []
    moov: bytes | None = None
    for i, box in enumerate(isobmff.file_boxes(cast(BinaryIO, f), length)):
        kind, payload, end = box.kind, box.payload, cast(int, box.end)
        if i == 0 and kind not in isobmff.LEADING:
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
    keep = merge_ranges(keep)
    skip = merge_ranges(c for t in skipped for c in t.chunks)
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


# --- Boxes --------------------------------------------------------------------

def _read(f: Source, n: int) -> bytes:
    data = f.read(n)
    if data is None or len(data) != n:
        raise _Unusual("short read")
    return data


def _child(d: bytes, s: int, e: int, kind: bytes) -> Span | None:
    """The payload of the one `kind` box in d[s:e], if there is one."""
    box = isobmff.child(d, s, e, kind)
    return None if box is None else (box.payload, cast(int, box.end))


def _tracks(moov: bytes) -> list[_Track]:
    tracks = []
    for box in isobmff.boxes(moov):
        if box.kind == b"mvex":
            raise _Unusual("fragmented")
        if box.kind in (b"cmov", b"meco"):
            raise _Unusual("compressed or extra moov")
        if box.kind == b"trak":
            tracks.append(_track(moov, box.payload, cast(int, box.end)))
    return tracks


def _track(d: bytes, s: int, e: int) -> _Track:
    t = _Track()
    tkhd = _need(d, s, e, b"tkhd")
    version = d[tkhd[0]]
    (t.track_id,) = struct.unpack_from(">I", d, tkhd[0] + (20 if version == 1 else 12))
    tref = _child(d, s, e, b"tref")
    if tref is not None:
        for ref in isobmff.boxes(d, *tref):
            if ref.kind == b"chap":
                t.chapter_refs += struct.unpack_from(f">{(cast(int, ref.end) - ref.payload) // 4}I", d, ref.payload)
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


def _need(d: bytes, s: int, e: int, kind: bytes) -> Span:
    found = _child(d, s, e, kind)
    if found is None:
        raise _Unusual(f"no {kind!r}")
    return found


def _check_self_contained(d: bytes, dinf: Span) -> None:
    """Every data reference must say "this file" (flag 1): else the chunk
    offsets point into another file."""
    dref = _child(d, *dinf, b"dref")
    if dref is None:
        return
    (count,) = struct.unpack_from(">I", d, dref[0] + 4)
    entries = list(isobmff.boxes(d, dref[0] + 8, dref[1]))
    if len(entries) != count:
        raise _Unusual("bad dref")
    for entry in entries:
        if not int.from_bytes(d[entry.payload + 1:entry.payload + 4], "big") & 1:
            raise _Unusual("external data reference")


def _chunk_ranges(d: bytes, stbl: Span) -> list[Range]:
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


def _chunk_offsets(d: bytes, stbl: Span) -> tuple[int, ...]:
    stco, co64 = _child(d, *stbl, b"stco"), _child(d, *stbl, b"co64")
    if (stco is None) == (co64 is None):
        raise _Unusual("need exactly one of stco/co64")
    s, e = stco or co64  # type: ignore[misc]  # one of them, checked above
    width = "I" if stco else "Q"
    (n,) = struct.unpack_from(">I", d, s + 4)
    if s + 8 + n * struct.calcsize(width) > e:
        raise _Unusual("short chunk offset table")
    return struct.unpack_from(f">{n}{width}", d, s + 8)


def _sample_sizes(d: bytes, stbl: Span) -> list[int] | tuple[int, ...]:
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
