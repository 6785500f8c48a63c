"""The picture an MP3 carries with `cover_art`: the source's own cover, or a
representative frame of its video, as a small JPEG for an ID3 APIC frame.

A source's own picture (a stream with the attached_pic disposition: the
cover of an M4A, a music video's, an MP3's APIC) wins; it is kept as it is
when already small, else scaled and encoded like a frame. Otherwise a few
keyframes spread over the video's first minutes are decoded (only keyframes:
seeking lands on them, and the decoder skips the rest) and the most detailed
one is taken, judged on a 64x36 grey thumbnail: its brightness spread plus its
edges. Near-black and near-uniform frames (fades, title cards of one colour)
never win; a video made only of those gets no picture rather than a black one.

PyAV does everything: frame.reformat scales, its mjpeg encoder writes the
JPEG, at the best quality that stays under MAX_BYTES. No numpy, no Pillow.
Picking is best effort: a video FFmpeg cannot decode gives no picture, never
a failed conversion.

A source that cannot seek (a file still being uploaded) is read front to
back instead, keyframes only, for its first GROWING_WINDOW_S seconds.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from fractions import Fraction

import av

log = logging.getLogger(__name__)

MAX_WIDTH = 500            # px; taller-than-wide pictures are bounded to 500 px high too
MAX_BYTES = 100 * 1024
CANDIDATES = 6             # keyframes looked at
WINDOW_S = 180.0           # spread over the first 3 minutes (or the whole, if shorter)
GROWING_WINDOW_S = 30.0
# A thumbnail darker than this on average, or flatter than this (standard
# deviation, 0..255), is no picture of anything.
MIN_MEAN = 24.0
MIN_STDDEV = 12.0
_THUMB = (64, 36)
_JPEG_QUALITIES = (2, 4, 7, 11, 16, 24, 31)  # mjpeg qscale: 2 best .. 31 smallest


@dataclass(frozen=True)
class Picture:
    mime: str    # image/jpeg or image/png
    data: bytes


def pick(src, *, seekable: bool = True) -> Picture | None:
    """The cover for the media file `src` (a binary file object), or None."""
    try:
        with av.open(src, mode="r", metadata_errors="replace") as container:
            attached = _attached(container)
            if attached is not None:
                return attached
            video = [s for s in container.streams.video
                     if not s.disposition & av.stream.Disposition.attached_pic and s.codec_context is not None]
            if not video:
                return None
            frame = _best_frame(container, video[0], seekable)
            return None if frame is None else Picture("image/jpeg", to_jpeg(frame))
    except (av.FFmpegError, ValueError) as e:
        log.info("no cover picture: %s", e)
        return None


def _attached(container) -> Picture | None:
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            continue
        for packet in container.demux(stream):
            data = bytes(packet)
            if not data:
                continue
            mime = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
            frames = packet.decode()
            if not frames:
                return None
            frame = frames[0]
            if len(data) <= MAX_BYTES and max(frame.width, frame.height) <= MAX_WIDTH:
                return Picture(mime, data)  # small already: as the publisher made it
            return Picture("image/jpeg", to_jpeg(frame))
    return None


def _best_frame(container, stream, seekable: bool):
    stream.codec_context.skip_frame = "NONKEY"
    best, best_score = None, 0.0
    for frame in _candidates(container, stream, seekable):
        s = score(frame)
        if s is not None and s > best_score:
            best, best_score = frame, s
    return best


def _candidates(container, stream, seekable: bool):
    """Up to CANDIDATES decoded keyframes over the first minutes."""
    if not seekable:
        yield from _first_keyframes(container, stream)
        return
    duration = container.duration / av.time_base if container.duration else WINDOW_S
    window = min(duration, WINDOW_S)
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    seen = set()
    for i in range(CANDIDATES):
        t = start + window * (i + 0.5) / CANDIDATES
        container.seek(int(t / stream.time_base), stream=stream, backward=True, any_frame=False)
        frame = next(_decoded(container, stream), None)
        if frame is not None and frame.pts not in seen:
            seen.add(frame.pts)
            yield frame


def _first_keyframes(container, stream):
    """Keyframes of the first GROWING_WINDOW_S seconds, read in order, at
    most 2 * CANDIDATES of them."""
    for count, frame in enumerate(_decoded(container, stream), 1):
        if frame.time is not None and frame.time > GROWING_WINDOW_S:
            return
        yield frame
        if count >= 2 * CANDIDATES:
            return


def _decoded(container, stream):
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.InvalidDataError:
            continue


def score(frame) -> float | None:
    """How much a frame shows: brightness spread plus edges, on a grey
    thumbnail; None for a near-black or near-uniform one."""
    width, height = _THUMB
    grey = frame.reformat(width=width, height=height, format="gray")
    plane = grey.planes[0]
    rows = bytes(plane)
    pixels = b"".join(rows[y * plane.line_size:y * plane.line_size + width] for y in range(height))
    n = len(pixels)
    mean = sum(pixels) / n
    stddev = (sum((p - mean) ** 2 for p in pixels) / n) ** 0.5
    if mean < MIN_MEAN or stddev < MIN_STDDEV:
        return None
    edges = sum(abs(a - b) for a, b in itertools.pairwise(pixels)) / n
    return stddev + edges


def to_jpeg(frame) -> bytes:
    """The frame at most MAX_WIDTH px on its long side, as the best-quality
    JPEG that fits MAX_BYTES (the smallest one otherwise)."""
    width, height = frame.width, frame.height
    scale = min(1.0, MAX_WIDTH / max(width, height))
    # Even sizes: yuvj420p halves both.
    width, height = max(2, round(width * scale) // 2 * 2), max(2, round(height * scale) // 2 * 2)
    scaled = frame.reformat(width=width, height=height, format="yuvj420p")
    data = b""
    for q in _JPEG_QUALITIES:
        encoder = av.CodecContext.create("mjpeg", "w")
        encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
        encoder.time_base = Fraction(1, 25)
        encoder.options = {"qmin": str(q), "qmax": str(q)}
        scaled.pts = 0
        data = b"".join(bytes(p) for p in [*encoder.encode(scaled), *encoder.encode(None)])
        if len(data) <= MAX_BYTES:
            break
    return data
