"""Re-lay an MP4's media data the way a phone writes it (for benchmarks).

FFmpeg's muxer interleaves audio and video packet by packet; phones (Android's
MediaMuxer, iPhone cameras) write about a second of one track, then a second
of the other, and the index (`moov`) at the end, because they only know it
once recording stops. Which bytes a converter must read depends on that
layout, so `make bench-e2e` measures the phone's.

    interleave(src, dst, seconds=1.0, index_first=False)

Samples keep their order within each track, so only the chunk tables change:
`stsc` (samples per chunk) and `stco` (replaced by 64-bit `co64`). Timing,
edit lists and codec data are copied unchanged.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from video2mp3.formats import isobmff

# Boxes we descend into to reach the sample tables; all others are copied as they are.
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


@dataclass
class Box:
    kind: bytes
    payload: bytes = b""
    children: list[Box] = field(default_factory=list)

    def child(self, kind: bytes) -> Box | None:
        return next((c for c in self.children if c.kind == kind), None)

    def encode(self) -> bytes:
        body = b"".join(c.encode() for c in self.children) if self.kind in _CONTAINERS else self.payload
        return isobmff.header(self.kind, len(body)) + body


def _parse(data: bytes, kind: bytes) -> Box:
    box = Box(kind, data)
    if kind in _CONTAINERS:
        box.children = [_parse(data[b.payload:b.end], b.kind) for b in isobmff.boxes(data)]
    return box


@dataclass
class _Track:
    stbl: Box
    timescale: int
    offsets: list[int]
    sizes: list[int]
    times: list[float]        # decode time of each sample, seconds
    descriptions: list[int]   # sample description index of each sample


def _track(trak: Box) -> _Track:
    mdia = trak.child(b"mdia")
    assert mdia is not None, "a track without mdia"
    mdhd = mdia.child(b"mdhd")
    minf = mdia.child(b"minf")
    assert mdhd is not None
    assert minf is not None
    stbl = minf.child(b"stbl")
    assert stbl is not None
    version = mdhd.payload[0]
    timescale = struct.unpack(">I", mdhd.payload[20:24] if version == 1 else mdhd.payload[12:16])[0]

    def table(kind: bytes, fmt: str, skip: int = 8) -> list[tuple]:
        box = stbl.child(kind)
        if box is None:
            return []
        count = struct.unpack(">I", box.payload[skip - 4:skip])[0]
        width = struct.calcsize(fmt)
        return [struct.unpack(fmt, box.payload[skip + i * width: skip + (i + 1) * width]) for i in range(count)]

    stsz = stbl.child(b"stsz")
    assert stsz is not None, "only stsz sample sizes are supported"
    fixed, count = struct.unpack(">II", stsz.payload[4:12])
    sizes = [fixed] * count if fixed else [s for (s,) in table(b"stsz", ">I", 12)]
    chunk_offsets = [o for (o,) in (table(b"stco", ">I") or table(b"co64", ">Q"))]
    stsc = table(b"stsc", ">III")
    offsets, descriptions = [], []
    for i, (first, per_chunk, desc) in enumerate(stsc):
        last = stsc[i + 1][0] - 1 if i + 1 < len(stsc) else len(chunk_offsets)
        for chunk in range(first - 1, last):
            pos = chunk_offsets[chunk]
            for _ in range(per_chunk):
                offsets.append(pos)
                descriptions.append(desc)
                pos += sizes[len(offsets) - 1]
    times, t = [], 0
    for n, delta in table(b"stts", ">II"):
        for _ in range(n):
            times.append(t / timescale)
            t += delta
    assert len(offsets) == len(sizes) == len(times), "inconsistent sample tables"
    return _Track(stbl, timescale, offsets, sizes, times, descriptions)


def interleave(src: str | os.PathLike, dst: str | os.PathLike, seconds: float = 1.0,
               index_first: bool = False) -> Path:
    """Write `src`'s media to `dst`, one chunk per track per `seconds` of decode time."""
    src, dst = Path(src), Path(dst)
    with open(src, "rb") as f:
        ftyp, moov = _read_index(f, src.stat().st_size)
    tracks = [_track(t) for t in moov.children if t.kind == b"trak"]
    chunks = _chunk_order(tracks, seconds)
    data_size = sum(sum(t.sizes) for t in tracks)
    mdat_header = isobmff.header(b"mdat", data_size, large=True)  # 64-bit size: files > 4 GB too
    _set_tables(tracks, chunks, 0)  # sizes only: offsets are fixed-width, so moov's length is known now
    moov_len = len(moov.encode())
    _set_tables(tracks, chunks, len(ftyp) + (moov_len if index_first else 0) + len(mdat_header))
    moov_bytes = moov.encode()
    assert len(moov_bytes) == moov_len

    with open(src, "rb") as f, open(dst, "wb") as out:
        out.write(ftyp)
        if index_first:
            out.write(moov_bytes)
        out.write(mdat_header)
        _copy_samples(f, out, tracks, chunks)
        if not index_first:
            out.write(moov_bytes)
    return dst


def _read_index(f: BinaryIO, size: int) -> tuple[bytes, Box]:
    """The file's ftyp box as it is, and its moov parsed down to the sample tables."""
    boxes = list(isobmff.file_boxes(f, size))
    ftyp = next(b for b in boxes if b.kind == b"ftyp")
    moov = next(b for b in boxes if b.kind == b"moov")
    assert ftyp.end is not None
    assert moov.end is not None
    f.seek(ftyp.start)
    ftyp_bytes = f.read(ftyp.end - ftyp.start)
    f.seek(moov.payload)
    return ftyp_bytes, _parse(f.read(moov.end - moov.payload), b"moov")


Chunk = tuple[int, list[int]]  # (track index, sample numbers)


def _chunk_order(tracks: list[_Track], seconds: float) -> list[Chunk]:
    """The new order: window by window, track by track, one chunk each."""
    chunks: list[Chunk] = []
    cursor = [0] * len(tracks)
    window = 1
    while any(cursor[i] < len(t.sizes) for i, t in enumerate(tracks)):
        for i, t in enumerate(tracks):
            start = cursor[i]
            while cursor[i] < len(t.sizes) and t.times[cursor[i]] < window * seconds:
                cursor[i] += 1
            if cursor[i] > start:
                chunks.append((i, list(range(start, cursor[i]))))
        window += 1
    return chunks


def _set_tables(tracks: list[_Track], chunks: list[Chunk], data_at: int) -> None:
    """Each track's stsc and co64 (its stco goes) for `chunks` laid out from byte data_at on."""
    per_track: list[list[tuple[int, list[int]]]] = [[] for _ in tracks]
    pos = data_at
    for i, samples in chunks:
        per_track[i].append((pos, samples))
        pos += sum(tracks[i].sizes[s] for s in samples)
    for t, mine in zip(tracks, per_track, strict=True):
        runs: list[tuple[int, int, int]] = []
        for n, (_, samples) in enumerate(mine, start=1):
            entry = (len(samples), t.descriptions[samples[0]])
            if not runs or runs[-1][1:] != entry:
                runs.append((n, *entry))
        stsc = struct.pack(">4xI", len(runs)) + b"".join(struct.pack(">III", *r) for r in runs)
        co64 = struct.pack(">4xI", len(mine)) + b"".join(struct.pack(">Q", p) for p, _ in mine)
        t.stbl.children = [c for c in t.stbl.children if c.kind not in (b"stsc", b"stco", b"co64")]
        t.stbl.children += [Box(b"stsc", stsc), Box(b"co64", co64)]


def _copy_samples(f: BinaryIO, out: BinaryIO, tracks: list[_Track], chunks: list[Chunk]) -> None:
    """The samples, chunk by chunk in the new order."""
    for i, samples in chunks:
        t = tracks[i]
        for s in samples:
            f.seek(t.offsets[s])
            out.write(f.read(t.sizes[s]))
