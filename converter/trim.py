"""Trimming: which samples a job's start_ms/end_ms keep, and getting there
without decoding the whole beginning of a long file.

Positions count samples at the MP3's rate from the first sample the audio
track decodes to. A trim keeps samples round(start_ms * rate / 1000) up to,
not including, that plus round((end_ms - start_ms) * rate / 1000), so the
MP3 decodes (delay and padding removed, as its info frame says) to exactly
end_ms - start_ms at its rate. An end past the audio's end ends the MP3
with the audio (as `ffmpeg -to` does); a start past it is a ConversionError
(the caller's). docs/architecture.md, "Trim and loudness", says more.

Seeking: a start at least SEEK_AFTER_S in, in a container whose audio
timestamps count samples exactly (MP4/MOV, WAV, FLAC), makes the demuxer seek
to SEEK_PREROLL_S before it; the first frame decoded there says, by its
timestamp, which sample it starts at. Other containers (Matroska's timestamps
are whole milliseconds; raw MP3 and ADTS streams guess theirs from the
bitrate), and a source that cannot seek (an upload still arriving), are
decoded from the beginning and the samples before the start dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

SEEK_AFTER_S = 30.0  # nearer starts are decoded to: it costs less than a seek may save
# Decoded and dropped before the start after a seek: the decoder's state
# (MDCT overlap, MP3's bit reservoir, the resampler's filter) has settled by then.
SEEK_PREROLL_S = 5.0
# Demuxers (PyAV's container.format.name) whose audio timestamps are exact sample counts.
EXACT_SEEK_FORMATS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "wav", "flac"})

Planes = tuple[bytes, ...]


@dataclass(frozen=True)
class Span:
    """The samples kept, at the MP3's rate: first up to end (None: the audio's end)."""

    first: int = 0
    end: int | None = None

    @classmethod
    def of(cls, options, rate: int) -> Span:
        start_ms = options.start_ms if options.HasField("start_ms") else 0
        first = (start_ms * rate + 500) // 1000
        if not options.HasField("end_ms"):
            return cls(first)
        return cls(first, first + ((options.end_ms - start_ms) * rate + 500) // 1000)

    @property
    def trims(self) -> bool:
        return self.first > 0 or self.end is not None

    def length(self, audio_samples: float | None) -> float | None:
        """Samples the MP3 will hold, given how many the audio has (if known)."""
        last = audio_samples if self.end is None else (
            self.end if audio_samples is None else min(self.end, audio_samples))
        return None if last is None else max(0.0, last - self.first)

    def cut(self, pos: int, planes: Planes, count: int, unit: int) -> tuple[Planes, int]:
        """The part of `count` samples at position `pos` that the span keeps
        (`unit`: bytes per sample in each plane)."""
        lo = max(0, self.first - pos)
        hi = count if self.end is None else min(count, self.end - pos)
        if hi <= lo:
            return tuple(b"" for _ in planes), 0
        if lo == 0 and hi == count:
            return planes, count
        return tuple(p[lo * unit:hi * unit] for p in planes), hi - lo

    def done(self, pos: int) -> bool:
        """Whether nothing at or after `pos` is kept."""
        return self.end is not None and pos >= self.end


def wants_seek(options, format_name: str, seekable: bool) -> bool:
    start_ms = options.start_ms if options.HasField("start_ms") else 0
    return seekable and format_name in EXACT_SEEK_FORMATS and start_ms >= SEEK_AFTER_S * 1000


class Frames:
    """Decoded frames of `stream`, from about `start_s` seconds on when
    seeking is worth it. `offset_s`: where the first frame yielded starts, in
    seconds from the track's first decoded sample (0 without a seek), known
    once the first frame is out.

    decode(container, stream) is the decoder (transcode._decode), called
    again after the seek."""

    def __init__(self, container, stream, decode: Callable[..., Generator], start_s: float | None) -> None:
        self._container, self._stream, self._decode = container, stream, decode
        self._start_s = start_s
        self.offset_s = 0.0
        self.seeked = False

    def __iter__(self) -> Iterator:
        frames = self._decode(self._container, self._stream)
        if self._start_s is None:
            yield from frames
            return
        first = next(frames, None)
        if first is None:
            return
        if first.pts is None or first.time_base is None:
            yield first  # no timestamps to seek by
            yield from frames
            return
        origin, tb = first.pts, first.time_base
        frames.close()
        self._container.seek(origin + int((self._start_s - SEEK_PREROLL_S) / tb), stream=self._stream,
                             backward=True)
        self._stream.codec_context.flush_buffers()
        frames = self._decode(self._container, self._stream)
        landed = next(frames, None)
        if landed is None or landed.pts is None or not 0 <= (landed.pts - origin) * tb <= self._start_s:
            # Not where a seek should land: start again from the beginning.
            self._container.seek(origin, stream=self._stream, backward=True)
            self._stream.codec_context.flush_buffers()
            frames = self._decode(self._container, self._stream)
            landed = next(frames, None)
            if landed is not None and landed.pts != origin:
                raise SeekFailed()
        else:
            self.offset_s = float((landed.pts - origin) * tb)
            self.seeked = True
        if landed is not None:
            yield landed
        yield from frames


class SeekFailed(Exception):
    """Seeking left the decoder somewhere it cannot tell: the caller decodes again without seeking."""
