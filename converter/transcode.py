"""The conversion itself: one audio track of any media file to an MP3 stream.

PyAV demuxes only the chosen audio stream, decodes it and resamples it to what
the encoder takes; LAME encodes it, through converter/lame.py rather than PyAV
because the LAME in PyAV's wheel is about 3x slower (docs/architecture.md, "The converter"). An
MP3 source with default options is copied packet by packet instead. Either way
the output gets an ID3v2 tag and a Xing/LAME info frame (converter/mp3out.py)
and is written as it is made: memory does not grow with the input's length.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import av

from video2mp3.converter import chapters as chaps
from video2mp3.converter import id3, info_frame, lame, loudness, trim
from video2mp3.converter import options as opts
from video2mp3.converter.info_frame import DECODER_DELAY, LAME_ENCODER_DELAY, InfoFrameParams
from video2mp3.converter.mp3out import Mp3Output
from video2mp3.converter.split_encode import SerialEncoder, SplitEncoder, worth_splitting
from video2mp3.core.background import InlineWriter, WriteBehind, run_ahead
from video2mp3.domain import limits as job_limits
from video2mp3.domain import mp3_options
from video2mp3.domain.limits import JobLimits
from video2mp3.formats import containers, mpeg_audio

log = logging.getLogger(__name__)

# LAME's own default algorithm quality, the one `ffmpeg -c:a libmp3lame` uses.
LAME_QUALITY = 3
# PCM handed to LAME per call: fewer, larger calls cost less Python overhead.
ENCODE_BATCH_SAMPLES = 32 * 1152
# Copied MP3 frames are written in batches of about this size.
COPY_BATCH_BYTES = 256 * 1024
# Bigger reads from the source file object mean fewer Python callbacks.
IO_BUFFER_SIZE = 1 << 20
# What transcode reads: any seekable binary file object.
Source = BinaryIO | io.RawIOBase
PROGRESS_INTERVAL_S = 0.25  # at most ~4 progress calls a second

# Demuxers FFmpeg picks for things that are not audio/video files.
# What FFmpeg may open (docs/security.md, "Uploads"). Our bytes come through
# PyAV's own I/O callbacks, which are no URL protocol; a demuxer that would
# open another URL (an HLS playlist's segments, an ffconcat script's files, a
# `concat:` or `subfile,` URL, a DASH manifest, a tee) may open nothing: the
# whitelist names no real protocol, so every nested open is refused.
PROTOCOL_WHITELIST = "none"
# Only the demuxers of the formats we convert (FFmpeg matches any of a
# demuxer's comma-separated names, e.g. "mov,mp4,m4a,3gp,3g2,mj2"): no
# playlists, scripts, images, subtitles, devices or network formats.
FORMAT_WHITELIST = ",".join((
    "mov", "matroska", "mpegts", "mpeg", "flv", "live_flv", "ogg", "flac", "wav", "w64", "avi", "asf",
    "caf", "aiff", "rm", "mp3", "aac", "ac3", "eac3", "dts", "truehd", "mlp", "amr", "wv", "ape", "tta",
    "au", "dsf", "mpc", "mpc8", "mxf", "dv", "nut",
))
_OPEN_OPTIONS = {"protocol_whitelist": PROTOCOL_WHITELIST, "format_whitelist": FORMAT_WHITELIST}
_NOT_MEDIA_FORMATS = {"tty", "srt", "ass", "webvtt", "subviewer", "microdvd", "lrc", "jacosub"}


class ConversionError(Exception):
    """The input cannot be converted; str() is a short sentence for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LimitExceeded(ConversionError):
    """The job breaks a limit per job (domain/limits.py); `kind` names it for
    the metrics: "audio_duration" or "mp3_size"."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


class _Budget:
    """Enforces JobLimits while converting: the declared duration before
    decoding, then the audio decoded and the MP3 bytes written, whatever the
    file declared (a container may declare nothing, or lie)."""

    def __init__(self, limits: JobLimits | None) -> None:
        self.limits = limits

    def declared(self, seconds: float | None) -> None:
        if self.limits and seconds and seconds > self.limits.max_audio_s:
            raise LimitExceeded(job_limits.too_long(seconds, self.limits, declared=True), "audio_duration")

    def seconds(self, seconds: float) -> None:
        if self.limits and seconds > self.limits.max_audio_s:
            raise LimitExceeded(job_limits.too_long(self.limits.max_audio_s, self.limits, declared=False),
                                "audio_duration")

    def bytes(self, n: int) -> None:
        if self.limits and n > self.limits.max_mp3_bytes:
            raise LimitExceeded(job_limits.too_big(self.limits.max_mp3_bytes, self.limits, estimated=False),
                                "mp3_size")


@dataclass(frozen=True)
class TranscodeResult:
    duration_seconds: float   # playing time of the MP3
    bytes_written: int        # bytes written to dst (header patch included, same length)
    copied: bool              # True when the MP3 packets were copied, not re-encoded
    header_patch: tuple[int, bytes] | None
    sample_rate: int
    channels: int
    title: str
    encoder_joins: int = 0    # segments encoded alongside and joined (converter/split_encode.py)
    join_fallbacks: int = 0   # segments whose join found no frame: re-encoded by the earlier encoder
    # split_chapters: every part, the first (written to dst) included; () for one MP3.
    parts: tuple[Part, ...] = ()


@dataclass(frozen=True)
class Part:
    """One MP3 of a conversion split by chapter."""
    track: int                # 1..N
    title: str                # the chapter's
    bytes_written: int
    header_patch: tuple[int, bytes] | None
    samples: int              # decoded length at the output rate, exact
    duration_seconds: float


ProgressCallback = Callable[[float], None]


def transcode(src: Source, dst, options, filename: str = "",
              on_progress: ProgressCallback | None = None, *,
              encoder: str | None = None, overlap: bool = True,
              encoders: int = 1, split_while: Callable[[], bool] | None = None,
              copy_mp3: bool = True, picture: tuple[str, bytes] | None = None,
              open_part: Callable[[int], Any] | None = None, limits: JobLimits | None = None,
              on_duration: Callable[[float | None], None] | None = None) -> TranscodeResult:
    """Convert the audio of `src` into an MP3 written to `dst`.

    src: a seekable binary file object (read/seek/tell), e.g. a GridFS file
    read in ranges (storage/gridfs_download.ChunkedDownload).
    dst: anything with .write(bytes); it is only ever appended to.
    options: video2mp3.media.v1.ConversionOptions (zero values mean defaults:
        192 kbps CBR, stereo, the source's sample rate or the nearest MP3 one,
        the default audio track).
    filename: the upload's name; its stem is the title when the file has none.
    on_progress: called with 0..1 from decoded timestamps, at most ~4 times a
        second, and with 1.0 at the end, always from the calling thread.
    encoder: LAME build, "system" or "lameenc" (see converter/lame.py);
        None picks the fastest one installed.
    overlap: decode and write in helper threads while LAME encodes, so one
        conversion finishes sooner by using part of a second core (~1.4
        cores, ~8 % more CPU in all). With as many busy worker processes as
        cores, False gives more conversions per second.
    encoders: LAME encoders at once, each on a segment of the track, joined
        into one stream (converter/split_encode.py): 2 finish about twice as
        fast on 2 free cores, for ~5 % more CPU. 1: one encoder, as is.
    split_while: with encoders > 1, asked before each new segment (every
        ~25 s of audio); False goes on with one encoder, e.g. once other
        conversions need the cores.
    copy_mp3: False re-encodes MP3 sources even when the fast path applies.
    picture: (mime type, bytes) for the ID3 tag's front cover
        (converter/cover_art.py picks it, with options.cover_art).

    The source's chapters become the tag's CHAP/CTOC frames (converter/chapters.py).
    open_part: with options.split_chapters and a source of two chapters or
        more, one MP3 per chapter: the first goes to dst, chapter n (2..N) to
        open_part(n); each is tagged with its title and track n/N and is
        sample-exact (LAME's delay and padding in its own info frame), so
        their lengths add up to the whole. The result's `parts` say what each
        got, with its own header patch.
    limits: the limits per job (domain/limits.py): a declared duration over
        the limit fails before anything is decoded; decoding more audio or
        writing more MP3 than allowed fails as soon as it happens
        (LimitExceeded, a ConversionError). None: no limits.
    on_duration: called once, before anything is decoded, with the seconds of
        audio the container declares for the chosen track (None: it does not
        say); it may raise to stop there.

    Returns a TranscodeResult. Its header_patch is (offset, data): the info
    frame (Xing/LAME tag: frame count, seek table, encoder delay/padding) can
    only be filled in once everything is encoded, and dst cannot seek, so the
    caller must overwrite len(data) bytes at that byte offset of the stored
    file with data (same length as what was written there). Without the patch
    the file still plays, but players get its duration and gapless trim wrong.

    Raises ConversionError for inputs that cannot be converted (not a media
    file, no audio track, truncated or corrupt data, empty audio, options out
    of range). dst may then hold a partial file, which the caller discards.
    """
    gain = None
    if options.HasField("loudness_lufs"):
        # First pass: the same audio decoded again, measured as it goes.
        begin = src.tell()
        measured = _measure(src, options, _scaled(on_progress, 0.0, MEASURE_SHARE))
        src.seek(begin)
        gain = loudness.plan(measured, options.loudness_lufs)
        # Says, in the job's log lines, why an MP3 is as loud as it is.
        log.info("loudness: measured %.1f LUFS, true peak %.1f dBTP; gain %+.1f dB to %.1f LUFS%s",
                 measured.integrated_lufs, measured.true_peak_dbtp, gain.gain_db, options.loudness_lufs,
                 f", limiter at {gain.limit_dbfs:.1f} dBFS" if gain.limit_dbfs is not None else "",
                 extra={"step": "loudness"})
        on_progress = _scaled(on_progress, MEASURE_SHARE, 1.0)
    with _open_input(src) as container:
        stream = _pick_audio_stream(container, options)
        _discard_others(container, stream)
        if on_duration is not None:
            on_duration(mp3_options.output_seconds(_declared_duration(stream), options))
        tags = id3.tags_for(stream.metadata, container.metadata, filename)
        chapters = chaps.trimmed(chaps.source_chapters(container, stream, _declared_duration(stream)),
                                 options.start_ms if options.HasField("start_ms") else 0,
                                 options.end_ms if options.HasField("end_ms") else None)
        tag = id3.build_id3v2(tags, picture, chapters)
        progress = _Progress(on_progress, stream)
        budget = _Budget(limits)
        budget.declared(mp3_options.output_seconds(_declared_duration(stream), options))
        try:
            if options.split_chapters and len(chapters) > 1 and open_part is not None:
                parts = _PartTags(tags, picture, chapters)
                result = _encode_parts(container, stream, dst, open_part, options, parts, progress, encoder,
                                       overlap, _can_seek(src), gain, budget)
            elif copy_mp3 and _is_copyable_mp3(stream, options):
                result = _copy_mp3(src, container, stream, dst, tag, tags, progress, overlap, budget)
            else:
                result = _encode_mp3(container, stream, dst, options, tag, tags, progress, encoder, overlap,
                                     encoders, split_while, _can_seek(src), gain, budget)
        except av.FFmpegError as e:
            raise ConversionError("the file is truncated or corrupt") from e
        except trim.SeekFailed:
            raise ConversionError("the file is truncated or corrupt") from None
    progress.report(1.0, force=True)
    return result


# Share of the progress bar the loudness measurement takes (it decodes, the
# encode pass decodes and encodes).
MEASURE_SHARE = 0.3


def _scaled(callback: ProgressCallback | None, lo: float, hi: float) -> ProgressCallback | None:
    if callback is None:
        return None
    report = callback
    return lambda fraction: report(lo + (hi - lo) * fraction)


def _can_seek(src: Source) -> bool:
    """Whether FFmpeg may seek in src (an upload still arriving may not)."""
    seekable = getattr(src, "seekable", None)
    return bool(seekable()) if callable(seekable) else True


def _measure(src: Source, options, on_progress: ProgressCallback | None) -> loudness.Measurement:
    """Loudness and true peak of the audio the encode pass will encode."""
    with _open_input(src) as container:
        stream = _pick_audio_stream(container, options)
        _discard_others(container, stream)
        settings = _settings(options, stream)
        progress = _Progress(on_progress, stream)
        meter = loudness.Meter(MEASURE_FORMAT, settings.sample_rate, settings.channels)
        pcm = _Pcm(container, stream, settings, MEASURE_FORMAT, options, _can_seek(src))
        batches = iter(pcm)
        try:
            for planes, count in _reported(batches, pcm, stream, progress):
                meter.push(planes, count)
        except av.FFmpegError as e:
            raise ConversionError("the file is truncated or corrupt") from e
        except trim.SeekFailed:
            raise ConversionError("the file is truncated or corrupt") from None
        finally:
            batches.close()
    progress.report(1.0, force=True)
    return meter.result()


# The PCM format the loudness filters are fed.
MEASURE_FORMAT = "fltp"


# --- Input ------------------------------------------------------------------

def _open_input(src: Source):
    head = _peek(src, 64)
    try:
        # Tags that are not valid UTF-8 (a damaged file, an old tagger) must not
        # stop the conversion: PyAV would raise UnicodeDecodeError while opening.
        container = av.open(src, mode="r", buffer_size=IO_BUFFER_SIZE, metadata_errors="replace",
                            options=_OPEN_OPTIONS)
    except av.FFmpegError as e:  # errors of src itself (I/O) are not ours to judge
        if containers.identify(head) is not None:  # a damaged media file, not something else
            raise ConversionError("the file is truncated or corrupt") from e
        raise ConversionError("not a media file") from e
    if container.format.name in _NOT_MEDIA_FORMATS or container.format.name.endswith("_pipe"):
        container.close()  # text and pictures: FFmpeg opens them, but they are no media
        raise ConversionError("not a media file")
    return container


def _peek(src: Source, n: int) -> bytes:
    pos = src.tell()
    try:
        return src.read(n) or b""
    finally:
        src.seek(pos)


def _pick_audio_stream(container, options):
    audio = list(container.streams.audio)
    if not audio:
        if container.streams.video:
            raise ConversionError("no audio track")
        raise ConversionError("not a media file")
    if options.HasField("audio_track"):
        index = options.audio_track
        if not 0 <= index < len(audio):
            raise ConversionError(f"audio track {index} does not exist (the file has {len(audio)})")
        stream = audio[index]
    else:
        default = [s for s in audio if s.disposition & av.stream.Disposition.default]
        stream = (default or audio)[0]
    if stream.codec_context is None:  # FFmpeg has no decoder for it (or a damaged header says so)
        raise ConversionError("the audio track's format is not supported")
    return stream


def _discard_others(container, stream) -> None:
    """Tell the demuxer we want no packets of the other streams: it then
    seeks over their data rather than reading it (MP4/MOV), and none of it
    reaches us (demux(stream) alone only drops their packets after reading)."""
    for other in container.streams:
        if other.index != stream.index:
            other.discard = av.stream.Discard.all


# --- Progress ---------------------------------------------------------------

class _Progress:
    """Turns decoded timestamps into throttled 0..1 progress calls."""

    def __init__(self, callback: ProgressCallback | None, stream) -> None:
        self._callback = callback
        self._last = 0.0
        self._fraction = 0.0
        tb = stream.time_base
        self._start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        self._duration = _declared_duration(stream)

    def fraction(self, item) -> float | None:
        """How far into the stream a frame or packet is (None if unknown)."""
        if not self._duration or item.pts is None or item.time_base is None:
            return None
        return (float(item.pts * item.time_base) - self._start) / self._duration

    def frame(self, item) -> None:
        if self._callback is not None and time.monotonic() - self._last >= PROGRESS_INTERVAL_S:
            # Unknown position: call anyway (last value), the caller's
            # lease renewal and cancel check depend on being called.
            fraction = self.fraction(item)
            self.report(self._fraction if fraction is None else fraction)

    def report(self, fraction: float, force: bool = False) -> None:
        if self._callback is None:
            return
        if force or time.monotonic() - self._last >= PROGRESS_INTERVAL_S:
            self._last = time.monotonic()
            self._fraction = max(self._fraction, min(1.0, max(0.0, fraction)))
            self._callback(self._fraction)


def _declared_duration(stream) -> float | None:
    """Seconds of audio the container says the stream holds, if it says.

    Matroska's DURATION tag and a file's overall duration can be end times
    rather than lengths (they count from 0, not from the first timestamp), so
    the stream's start is taken off them: an underestimate at worst.
    """
    if stream.duration:
        return float(stream.duration * stream.time_base)
    start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
    tagged = stream.metadata.get("DURATION") or stream.metadata.get("duration")  # Matroska
    if tagged:
        m = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d+)?)", tagged.strip())
        if m:
            h, mi, s = m.groups()
            return max(0.0, int(h) * 3600 + int(mi) * 60 + float(s) - start)
    container = stream.container
    if container.duration and len(container.streams) == 1:
        return max(0.0, container.duration / av.time_base - start)
    return None


# --- Decoding ---------------------------------------------------------------

# Corrupt packets the decoder may reject before we call the whole file corrupt:
# a glitch in a long file should not cost the user the conversion.
_MAX_BAD_PACKET_SHARE = 0.02
_MIN_BAD_PACKETS = 3


def _decode(container, stream) -> Generator:
    """Decoded frames of `stream`; only its packets are demuxed."""
    packets = bad = 0
    for packet in container.demux(stream):
        packets += 1
        try:
            frames = packet.decode()
        except av.InvalidDataError:
            bad += 1  # judged below, against the number of packets
            if bad > _MIN_BAD_PACKETS and bad > packets * _MAX_BAD_PACKET_SHARE:
                raise ConversionError("the audio is corrupt") from None
            continue
        yield from frames


def _check_complete(stream, decoded_seconds: float) -> None:
    """Fail when much less audio decoded than the file declares: truncated."""
    if decoded_seconds <= 0:
        raise ConversionError("the audio track is empty")
    declared = _declared_duration(stream)
    if declared and decoded_seconds < 0.9 * declared - 0.5:
        raise ConversionError("the file is truncated or corrupt")


class _Resampler:
    """av.AudioResampler to the encoder's format, rate and layout (5.1 and up
    mixed down), rebuilt if the input format changes mid-stream (it happens in
    broadcast captures). Yields (one bytes object per plane, samples)."""

    def __init__(self, fmt: str, rate: int, channels: int) -> None:
        self._format = fmt
        self._rate = rate
        self._layout = "mono" if channels == 1 else "stereo"
        self._planes = channels if fmt.endswith("p") else 1
        self._bytes_per_sample = _plane_unit(fmt, channels)
        self._key: tuple[str, str, int] | None = None
        self._resampler: av.AudioResampler | None = None

    def resample(self, frame) -> Iterator[tuple[tuple[bytes, ...], int]]:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self._key:
            yield from self.flush()
            self._key = key
            self._resampler = av.AudioResampler(format=self._format, layout=self._layout, rate=self._rate)
        assert self._resampler is not None  # made above for the first frame (no key is None)
        for out in self._resampler.resample(frame):
            yield self._pcm(out)

    def flush(self) -> Iterator[tuple[tuple[bytes, ...], int]]:
        if self._resampler is not None:
            for out in self._resampler.resample(None):
                yield self._pcm(out)

    def _pcm(self, frame) -> tuple[tuple[bytes, ...], int]:
        # Planes may be padded past the last sample; cut them to size.
        size = frame.samples * self._bytes_per_sample
        planes = tuple(bytes(memoryview(frame.planes[i])[:size]) for i in range(self._planes))
        return planes, frame.samples


def _plane_unit(fmt: str, channels: int) -> int:
    """Bytes one sample takes in each plane of PCM in PyAV format `fmt`."""
    return av.AudioFormat(fmt).bytes * (1 if fmt.endswith("p") else channels)


def _writer(write: Callable[[bytes], object], overlap: bool) -> WriteBehind[bytes] | InlineWriter[bytes]:
    """Where MP3 bytes go: to write() on a writer thread (overlap), up to 8
    pieces behind the encoder, or at once."""
    def write_each(pieces: list[bytes]) -> None:
        for piece in pieces:
            write(piece)

    return WriteBehind(write_each, name="transcode-write") if overlap else InlineWriter(write_each)


# --- Encode path --------------------------------------------------------------

def _settings(options, stream) -> opts.Mp3Settings:
    try:
        return opts.resolve(options, stream.codec_context.sample_rate)
    except opts.InvalidOptions as e:
        raise ConversionError(str(e)) from e


def _encode_mp3(container, stream, dst, options, tag, tags, progress, backend, overlap,
                encoders, split_while, seekable=True, gain: loudness.Plan | None = None,
                budget: _Budget | None = None) -> TranscodeResult:
    budget = budget or _Budget(None)
    source_rate = stream.codec_context.sample_rate
    settings = _settings(options, stream)

    def open_encoder():
        return lame.open_encoder(settings.sample_rate, settings.channels, settings.bitrate_kbps,
                                 settings.vbr_quality, LAME_QUALITY, backend)

    fmt = lame.input_format(backend)
    out = Mp3Output(dst, tag, _info_params(settings, source_rate))
    samples = 0
    # With overlap, decoding runs ahead in one thread and writing (frame scan,
    # CRC, dst) lags behind in another while LAME encodes here (or in
    # `encoders` pool threads); all of them release the GIL, so LAME never
    # waits for them.
    pcm = _Pcm(container, stream, settings, fmt, options, seekable, gain)
    batches: Generator = iter(pcm)
    if overlap:
        batches = run_ahead(batches, name="transcode-read")
    writer = _writer(out.write, overlap)
    sink: SplitEncoder | SerialEncoder
    frame = mpeg_audio.samples_per_frame(settings.sample_rate)
    declared = pcm.expected_samples()
    if declared is not None:
        declared /= settings.sample_rate
    if encoders > 1 and worth_splitting(declared, settings.sample_rate, frame):
        sink = SplitEncoder(open_encoder, frame, _plane_unit(fmt, settings.channels), writer.write, encoders,
                            split_while or (lambda: True))
    else:
        sink = SerialEncoder(open_encoder(), writer.write)
    try:
        for planes, count in _reported(batches, pcm, stream, progress):
            samples += count
            budget.seconds(samples / settings.sample_rate)
            budget.bytes(out.bytes_written)
            sink.encode(planes, count)
        sink.finish()
    except BaseException:
        sink.abort()
        writer.abort()
        raise
    finally:
        batches.close()  # now, not at garbage collection: the decoder thread
        # must be done with the container before the caller closes it
    writer.close()
    budget.bytes(out.bytes_written)
    joins, fallbacks = (sink.joins, sink.fallbacks) if isinstance(sink, SplitEncoder) else (0, 0)

    # LAME puts `delay` samples before the audio and pads the last frame.
    # Audio was decoded (_check_complete), so LAME produced frames.
    assert out.scanner.first is not None, "LAME produced no frames"
    total = out.scanner.frames * out.scanner.first.samples_per_frame
    patch = out.finish(LAME_ENCODER_DELAY, total - LAME_ENCODER_DELAY - samples)
    return TranscodeResult(
        duration_seconds=samples / settings.sample_rate,
        bytes_written=out.bytes_written,
        copied=False,
        header_patch=patch,
        sample_rate=settings.sample_rate,
        channels=settings.channels,
        title=tags.get("title", ""),
        encoder_joins=joins,
        join_fallbacks=fallbacks,
    )


class _PartTags:
    """The ID3 tag of each part: the chapter's title, track n/N, the
    source's title as the album (unless it has one), the picture."""

    def __init__(self, tags: dict[str, str], picture, chapters: list[id3.Chapter]) -> None:
        self.tags, self.picture, self.chapters = tags, picture, chapters

    def title(self, track: int) -> str:
        return self.chapters[track - 1].title

    def tag(self, track: int) -> bytes:
        tags = dict(self.tags, title=self.title(track), track=f"{track}/{len(self.chapters)}")
        if not self.tags.get("album") and self.tags.get("title"):
            tags["album"] = self.tags["title"]
        return id3.build_id3v2(tags, self.picture)


def _encode_parts(container, stream, dst, open_part, options, tags: _PartTags, progress, backend,
                  overlap: bool, seekable: bool = True, gain: loudness.Plan | None = None,
                  budget: _Budget | None = None) -> TranscodeResult:
    budget = budget or _Budget(None)
    """One MP3 per chapter, each from its own LAME encoder (so each has its
    own delay and padding: sample-exact), cut at the chapter starts in
    output samples. One encoder at a time (a part starts where the previous
    one ends); with overlap, decoding runs ahead in a helper thread."""
    try:
        settings = opts.resolve(options, stream.codec_context.sample_rate)
    except opts.InvalidOptions as e:
        raise ConversionError(str(e)) from e
    fmt = lame.input_format(backend)
    unit = _plane_unit(fmt, settings.channels)
    cuts = chaps.split_samples(tags.chapters, settings.sample_rate)
    params = _info_params(settings, stream.codec_context.sample_rate)

    def open_encoder():
        return lame.open_encoder(settings.sample_rate, settings.channels, settings.bitrate_kbps,
                                 settings.vbr_quality, LAME_QUALITY, backend)

    part = _OnePart(1, dst, tags.tag(1), params, open_encoder())
    parts: list[Part] = []
    total = 0
    pcm = _Pcm(container, stream, settings, fmt, options, seekable, gain)
    batches: Generator = iter(pcm)
    if overlap:
        batches = run_ahead(batches, name="transcode-read")
    try:
        for planes, count in _reported(batches, pcm, stream, progress):
            offset = 0
            while len(parts) < len(cuts) and cuts[len(parts)] < total + count - offset:
                take = max(0, cuts[len(parts)] - total)  # samples of this batch before the cut
                part.encode(tuple(p[offset * unit:(offset + take) * unit] for p in planes), take)
                offset += take
                total += take
                parts.append(part.finish(tags.title(part.track), settings.sample_rate))
                track = len(parts) + 1
                part = _OnePart(track, open_part(track), tags.tag(track), params, open_encoder())
            rest = count - offset
            part.encode(tuple(p[offset * unit:] for p in planes) if offset else planes, rest)
            total += rest
            budget.seconds(total / settings.sample_rate)
            budget.bytes(sum(p.bytes_written for p in parts) + part.out.bytes_written)
        parts.append(part.finish(tags.title(part.track), settings.sample_rate))
    except BaseException:
        part.abort()
        raise
    finally:
        batches.close()  # the decoder thread is done with the container before the caller closes it
    return TranscodeResult(
        duration_seconds=total / settings.sample_rate,
        bytes_written=sum(p.bytes_written for p in parts),
        copied=False,
        header_patch=parts[0].header_patch,
        sample_rate=settings.sample_rate,
        channels=settings.channels,
        title=tags.tags.get("title", ""),
        parts=tuple(parts),
    )


class _OnePart:
    """A part being encoded: its encoder, written inline to its sink."""

    def __init__(self, track: int, dst, tag: bytes, params: InfoFrameParams, encoder) -> None:
        self.track = track
        self.out = Mp3Output(dst, tag, params)
        self.sink = SerialEncoder(encoder, self.out.write)
        self.samples = 0

    def encode(self, planes, samples: int) -> None:
        if samples > 0:
            self.sink.encode(planes, samples)
            self.samples += samples

    def finish(self, title: str, rate: int) -> Part:
        self.sink.finish()
        scanner = self.out.scanner
        if scanner.first is None:  # a chapter with no audio at all: LAME wrote nothing
            raise ConversionError(f"chapter {self.track} holds no audio")
        total = scanner.frames * scanner.first.samples_per_frame
        patch = self.out.finish(LAME_ENCODER_DELAY, total - LAME_ENCODER_DELAY - self.samples)
        return Part(track=self.track, title=title, bytes_written=self.out.bytes_written, header_patch=patch,
                    samples=self.samples, duration_seconds=self.samples / rate)

    def abort(self) -> None:
        self.sink.abort()


def _reported(batches, pcm: _Pcm, stream, progress: _Progress) -> Iterator[tuple[tuple[bytes, ...], int]]:
    """(planes, samples) of `batches` (a _Pcm's, maybe run ahead in a thread),
    reporting progress here, on the calling thread, and judging what was
    decoded once the last batch is out (pcm.check)."""
    for planes, count, fraction, last in batches:
        if last:
            pcm.check(stream)
        else:
            progress.report(0.0 if fraction is None else fraction)
        yield planes, count


class _Pcm:
    """(planes, samples, progress fraction, is-last): the decoded audio in the
    encoder's format, trimmed to the job's span (converter/trim.py) and with
    the loudness gain applied (converter/loudness.py), in batches of about
    ENCODE_BATCH_SAMPLES, because fewer, larger LAME calls cost less overhead.
    Iterate it once; check() judges what was decoded once the last batch is out."""

    def __init__(self, container, stream, settings: opts.Mp3Settings, fmt: str, options, seekable: bool,
                 gain: loudness.Plan | None = None) -> None:
        self._stream = stream
        self._rate = settings.sample_rate
        self.span = trim.Span.of(options, self._rate)
        # With a gain, the PCM is float until the gain's graph hands it over in fmt.
        self._gain = (loudness.Gain(gain, MEASURE_FORMAT, fmt, self._rate, settings.channels,
                                    _plane_unit(fmt, settings.channels))
                      if gain is not None and gain.changes else None)
        decode_fmt = MEASURE_FORMAT if self._gain is not None else fmt
        self._resampler = _Resampler(decode_fmt, self._rate, settings.channels)
        self._unit = _plane_unit(decode_fmt, settings.channels)
        seek = trim.wants_seek(options, container.format.name, seekable)
        self._frames = trim.Frames(container, stream, _decode, self.span.first / self._rate if seek else None)
        self.position = 0       # samples decoded, counted from the track's first one
        self.kept = 0           # samples handed over
        self.cut_short = False  # ended at the span's end, before the audio did

    def expected_samples(self) -> float | None:
        """How many samples the batches will hold, if the container says how long the audio is."""
        declared = _declared_duration(self._stream)
        return self.span.length(None if declared is None else declared * self._rate)

    def __iter__(self) -> Generator[tuple[tuple[bytes, ...], int, float | None, bool], None, None]:
        return self._batches()

    def check(self, stream) -> None:
        """Fail when much less audio decoded than the file declares
        (truncated), or when the trim starts after the audio ends."""
        if not self.cut_short:
            _check_complete(stream, self.position / self._rate)
        if self.kept == 0:
            raise ConversionError(f"start_ms is past the end of the audio "
                                  f"({self.position / self._rate:.3f} s long)")

    def _batches(self):
        pending: list[tuple[bytes, ...]] = []
        count = 0
        fraction = None
        expected = self.expected_samples()
        for planes, n in self._pcm():
            pending.append(planes)
            count += n
            if count >= ENCODE_BATCH_SAMPLES:
                fraction = self.kept / expected if expected else None
                yield (*self._out(pending, count), fraction, False)
                pending, count = [], 0
        yield (*self._out(pending, count, last=True), fraction, True)

    def _pcm(self) -> Iterator[tuple[tuple[bytes, ...], int]]:
        """Resampled PCM inside the span, in decoded order."""
        started = False
        for frame in self._frames:
            if not started:  # a seek says where the first frame is
                self.position = round(self._frames.offset_s * self._rate)
                started = True
            yield from self._keep(self._resampler.resample(frame))
            if self.span.done(self.position):
                self.cut_short = True
                return
        yield from self._keep(self._resampler.flush())

    def _keep(self, pcm):
        for planes, n in pcm:
            kept, k = self.span.cut(self.position, planes, n, self._unit)
            self.position += n
            if k:
                self.kept += k
                yield kept, k

    def _out(self, pending, count: int, last: bool = False) -> tuple[tuple[bytes, ...], int]:
        planes = tuple(b"".join(plane) for plane in zip(*pending, strict=True)) if pending else (b"",)
        if self._gain is None:
            return planes, count
        planes, count = self._gain.apply(planes, count) if count else (planes, 0)
        if last:
            rest, more = self._gain.flush()
            planes = tuple(a + b for a, b in zip(planes, rest, strict=False)) if count else rest
            count += more
        return planes, count


def _info_params(settings: opts.Mp3Settings, source_rate: int) -> InfoFrameParams:
    vbr_quality = settings.vbr_quality  # None: CBR (settings.vbr is False)
    return InfoFrameParams(
        vbr=settings.vbr,
        bitrate_kbps=settings.bitrate_kbps,
        preset=500 - 10 * vbr_quality if vbr_quality is not None else settings.bitrate_kbps,
        quality=LAME_QUALITY,
        vbr_quality=vbr_quality if vbr_quality is not None else 4,
        source_rate=source_rate,
    )


# --- Fast path: copy MP3 packets ----------------------------------------------

_MP3_DECODERS = {"mp3", "mp3float", "mp3fixed"}


def _is_copyable_mp3(stream, options) -> bool:
    cc = stream.codec_context
    if cc.codec.name not in _MP3_DECODERS:
        return False
    channels = cc.layout.nb_channels
    return not opts.asks_for_change(options, cc.sample_rate, channels, (cc.bit_rate or 0) // 1000)


def _copy_mp3(src, container, stream, dst, tag, tags, progress, overlap, budget: _Budget) -> TranscodeResult:
    """Write the source's MP3 frames unchanged, under a new ID3 tag and info frame."""
    cc = stream.codec_context
    source_tag = _source_lame_tag(src) if container.format.name == "mp3" else None
    params = InfoFrameParams(
        vbr=False, bitrate_kbps=(cc.bit_rate or 0) // 1000, preset=0, quality=LAME_QUALITY,
        source_rate=cc.sample_rate,
        encoder=source_tag.encoder if source_tag else b"LAME3.100",
    )
    out = Mp3Output(dst, tag, params)
    writer = _writer(out.write, overlap)
    first_pts = None
    batch: list[bytes] = []
    size = total_bytes = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            if first_pts is None and packet.pts is not None:
                first_pts = packet.pts
            batch.append(bytes(packet))
            size += packet.size
            if size >= COPY_BATCH_BYTES:  # one write per batch, not per 400-byte frame
                total_bytes += size
                budget.bytes(total_bytes)
                if packet.pts is not None and first_pts is not None:
                    budget.seconds(float((packet.pts - first_pts) * stream.time_base))
                writer.write(b"".join(batch))
                batch, size = [], 0
                progress.frame(packet)
        budget.bytes(total_bytes + size)
        writer.write(b"".join(batch))
    except BaseException:
        writer.abort()
        raise
    writer.close()

    scanner = out.scanner
    if scanner.first is None:
        raise ConversionError("the audio track is empty")
    rate = scanner.first.sample_rate
    total = scanner.frames * scanner.first.samples_per_frame
    delay, padding = _copied_delay_padding(stream, source_tag, first_pts, total, rate)
    # Players drop delay + 529 samples at the start and stop at total + 529 -
    # padding, which cannot trim anything when padding is under 529.
    played = total - delay - max(padding, DECODER_DELAY)
    _check_complete(stream, played / rate)
    patch = out.finish(delay, padding)
    return TranscodeResult(
        duration_seconds=played / rate,
        bytes_written=out.bytes_written,
        copied=True,
        header_patch=patch,
        sample_rate=rate,
        channels=1 if scanner.first.channel_mode == 3 else 2,
        title=tags.get("title", ""),
    )


def _source_lame_tag(src) -> info_frame.LameTag | None:
    """The source MP3's own LAME tag (FFmpeg consumes it without telling us).

    Reads past PyAV's back and restores the position, which is safe because
    PyAV only reads inside its own calls.
    """
    pos = src.tell()
    try:
        src.seek(0)
        skip = id3.id3v2_size(src.read(10))
        src.seek(skip)
        return info_frame.read_lame_tag(src.read(4096))
    finally:
        src.seek(pos)


def _copied_delay_padding(stream, source_tag, first_pts, total: int, rate: int) -> tuple[int, int]:
    """Delay/padding that make players trim the copy like the source.

    An MP3 file's own LAME tag says it exactly. Otherwise the container does:
    the demuxer starts the stream after the priming samples (start_time later
    than the first packet) and its duration is the audio's length.
    """
    if source_tag is not None:
        return source_tag.delay, source_tag.padding
    tb = stream.time_base
    skip = 0
    if first_pts is not None and stream.start_time is not None:
        skip = max(0, round(float((stream.start_time - first_pts) * tb) * rate))
    declared = _declared_duration(stream)
    length = round(declared * rate) if declared else total - skip
    delay = max(0, skip - DECODER_DELAY)
    return delay, max(0, total - delay - length)
