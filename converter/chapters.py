"""A source's chapters, as the MP3 keeps them (ID3 CHAP/CTOC) or splits by them.

FFmpeg reads them when it opens the file: Matroska/WebM chapters, MP4's
Nero `chpl` box and QuickTime chapter text tracks (whose samples the mov
demuxer reads itself, so skipping video bytes never hides them), Ogg's
CHAPTERxx comments, an MP3's own CHAP frames. PyAV gives them as
`container.chapters()`.

Times are made relative to the MP3's first sample, which is the audio
stream's start (transcode decodes from there): a chapter at 0:30 of a
video whose audio starts at 0.02 s is at 29 980 ms in the MP3. Chapters
that end before the audio starts, or have no length, are dropped; the
rest are ordered by start and each ends where the next starts at the latest;
those starting after the audio's declared end are dropped too.
"""
from __future__ import annotations

from fractions import Fraction

from video2mp3.converter.id3 import Chapter

# More would make an ID3 tag of little use and a ZIP of thousands of files.
MAX_CHAPTERS = 999


def source_chapters(container, audio_stream, audio_seconds: float | None = None) -> list[Chapter]:
    """The container's chapters in ms from the audio's start; [] if none.
    `audio_seconds`: how long the audio is said to last, if known: chapters
    starting after it are dropped (a split would have no audio for them)."""
    origin = _seconds(audio_stream.start_time, audio_stream.time_base)
    found = []
    for raw in container.chapters():
        tb = raw.get("time_base") or Fraction(1, 1000)
        start = max(Fraction(0), _seconds(raw["start"], tb) - origin)
        end = _seconds(raw["end"], tb) - origin
        if audio_seconds is not None and start >= Fraction(audio_seconds):
            continue
        if end <= start:
            continue
        title = (raw.get("metadata") or {}).get("title", "").strip()
        found.append((start, end, title))
    found.sort(key=lambda c: c[0])
    out: list[Chapter] = []
    for i, (start, end, title) in enumerate(found[:MAX_CHAPTERS]):
        following = found[i + 1][0] if i + 1 < len(found) else None
        if following is not None:
            end = min(end, following)
        if end <= start:
            continue
        out.append(Chapter(round(start * 1000), round(end * 1000), title or f"Chapter {len(out) + 1}"))
    return out


def _seconds(value, time_base) -> Fraction:
    return Fraction(0) if value is None else Fraction(value) * Fraction(time_base)


def trimmed(chapters: list[Chapter], start_ms: int, end_ms: int | None) -> list[Chapter]:
    """The chapters of a trimmed MP3 (the source's start_ms..end_ms): shifted
    to its first sample, cut at its ends; chapters outside it are dropped."""
    if not start_ms and end_ms is None:
        return chapters
    out = []
    for chapter in chapters:
        start = max(chapter.start_ms, start_ms)
        end = chapter.end_ms if end_ms is None else min(chapter.end_ms, end_ms)
        if end > start:
            out.append(Chapter(start - start_ms, end - start_ms, chapter.title))
    return out


def split_samples(chapters: list[Chapter], rate: int) -> list[int]:
    """Where each chapter after the first starts, in samples at `rate` from
    the MP3's first sample. The first chapter also takes any audio before it,
    the last any after it, so the parts add up to the whole exactly."""
    return [round(ch.start_ms * rate / 1000) for ch in chapters[1:]]
