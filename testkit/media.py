"""Test media made on the fly with PyAV: no binary fixtures in the repo.

make_media() writes a small video or audio file holding a pure tone (440 Hz by
default), so a test can check that what comes out of the converter is the same
tone, as long and at the expected rate. analyse_mp3() decodes a result the way
a player would (FFmpeg honours the LAME header's delay/padding) and measures it.

Both names and their first arguments are used by other test modules: keep them
stable.
"""

from __future__ import annotations

import heapq
import io
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np

# Which container format FFmpeg should write for a file extension.
FORMAT_BY_EXT = {
    ".mp4": "mp4", ".m4a": "ipod", ".mov": "mov", ".mkv": "matroska",
    ".mka": "matroska", ".webm": "webm", ".avi": "avi", ".flv": "flv",
    ".ts": "mpegts", ".ogg": "ogg", ".ogv": "ogg", ".opus": "ogg",
    ".3gp": "3gp", ".wmv": "asf", ".asf": "asf", ".wma": "asf",
    ".wav": "wav", ".flac": "flac", ".mp3": "mp3", ".aac": "adts",
    ".ac3": "ac3",
}

# A cheap video codec per container for the default video_codec="auto".
AUTO_VIDEO = {
    "webm": "libvpx", "ogg": "libvpx", "asf": "wmv2", "flv": "flv",
    "avi": "mpeg4",
}

# Codecs whose FFmpeg encoders are marked experimental.
EXPERIMENTAL = {"vorbis", "opus"}


def make_media(
    path: str | os.PathLike,
    container: str | None = None,
    video_codec: str | None = "auto",
    audio_codec: str | None = "aac",
    duration: float = 3.0,
    freq: float = 440.0,
    sample_rate: int = 48000,
    layout: str = "stereo",
    n_audio_tracks: int = 1,
    *,
    track_freqs: Iterable[float] | None = None,
    default_track: int | None = None,
    start_pts: float = 0.0,
    metadata: dict[str, str] | None = None,
    faststart: bool = False,
    sample_fmt: str | None = None,
    audio_bit_rate: int | None = None,
    video_size: tuple[int, int] = (64, 48),
    fps: int = 10,
    video_options: dict[str, str] | None = None,
    video_noise: int = 0,
) -> str:
    """Write a media file with `n_audio_tracks` tones and maybe a video track.

    container: FFmpeg muxer name; None means from the file extension.
    video_codec: "h264", "mpeg4", ..., "auto" (a codec the container takes) or
        None for an audio-only file.
    audio_codec: FFmpeg encoder name (aac, mp3, libopus, vorbis, ac3, eac3,
        flac, pcm_s16le, pcm_s24le, pcm_f32le, alac, wmav2, ...) or None for a
        video without audio.
    track_freqs: tone of each audio track (default: freq, then 660, 880, ...).
    default_track: the audio track flagged "default" (None: FFmpeg's choice).
    start_pts: seconds added to every timestamp (non-zero start).
    faststart: mp4/mov only; False leaves the moov atom at the end (FFmpeg's
        default), True moves it to the front.
    sample_fmt: sample format for the audio encoder (e.g. s32 for flac 24-bit).
    video_noise: 0..255, random noise in the frames to make the video bigger.
    """
    path = os.fspath(path)
    fmt = container or FORMAT_BY_EXT.get(os.path.splitext(path)[1].lower(), "mp4")
    freqs = list(track_freqs) if track_freqs is not None else [
        freq if i == 0 else 440.0 + 220.0 * (i + 1) for i in range(n_audio_tracks)
    ]
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(path, "w", format=fmt, options=options) as out:
        out.metadata.update(metadata or {})
        vstream = _add_video(out, fmt, video_codec, video_size, fps, video_options)
        astreams = [
            _add_audio(out, audio_codec, sample_rate, layout, sample_fmt, audio_bit_rate)
            for _ in range(n_audio_tracks if audio_codec else 0)
        ]
        _set_default_track(astreams, default_track)
        # Open every encoder and write the header first (so even an empty
        # track gets a file), then interleave the frames by time.
        out.start_encoding()
        sources = [_tone_frames(s, f, duration, start_pts) for s, f in zip(astreams, freqs, strict=False)]
        if vstream is not None:
            sources.append(_video_frames(vstream, duration, fps, start_pts, video_noise))
        for stream, frame in heapq.merge(*sources, key=lambda sf: sf[1].time):
            out.mux(stream.encode(frame))
        for stream in [*astreams, vstream]:
            if stream is not None:
                out.mux(stream.encode(None))
    return path


def _add_video(out, fmt, codec, size, fps, options):
    if codec is None:
        return None
    if codec == "auto":
        codec = AUTO_VIDEO.get(fmt, "h264")
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    opts = {"preset": "ultrafast"} if codec in ("h264", "libx264") else {}
    if codec in ("libvpx", "vp8"):
        opts = {"deadline": "realtime", "cpu-used": "8"}
    opts.update(options or {})
    stream.codec_context.options = opts
    return stream


def _add_audio(out, codec, rate, layout, sample_fmt, bit_rate):
    stream = out.add_stream(codec, rate=rate)
    cc = stream.codec_context
    cc.layout = layout
    if sample_fmt:
        cc.format = sample_fmt
    if bit_rate or codec == "wmav2":
        cc.bit_rate = bit_rate or 128000  # wmav2 will not open without one
    if codec in EXPERIMENTAL:
        cc.options = {"strict": "experimental"}
    return stream


def _set_default_track(streams, default_track):
    if default_track is None:
        return
    for i, stream in enumerate(streams):
        stream.disposition = (
            av.stream.Disposition.default if i == default_track else av.stream.Disposition(0)
        )


def tone(freq: float, n: int, rate: int, channels: int, offset: int = 0) -> np.ndarray:
    """A sine at half scale, the same in every channel, planar float32."""
    t = (np.arange(n) + offset) / rate
    mono = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(mono[None, :], channels, axis=0)


def _tone_frames(stream, freq, duration, start_pts):
    """Yield (stream, frame) of a tone in the encoder's format and frame size."""
    cc = stream.codec_context  # open by now: frame_size and format are fixed
    rate, layout = cc.sample_rate, cc.layout.name
    channels = cc.layout.nb_channels
    total = round(duration * rate)
    frame_size = cc.frame_size or 1024
    if total % frame_size and not _takes_small_last_frame(cc.codec):
        total += frame_size - total % frame_size  # such encoders need whole frames
    resampler = av.AudioResampler(format=cc.format.name, layout=layout, rate=rate)
    first = round(start_pts * rate)
    for pos in range(0, total, frame_size):
        n = min(frame_size, total - pos)
        frame = av.AudioFrame.from_ndarray(tone(freq, n, rate, channels, pos), format="fltp", layout=layout)
        frame.sample_rate = rate
        for converted in resampler.resample(frame):
            converted.pts, converted.time_base = first + pos, Fraction(1, rate)
            yield stream, converted


def _takes_small_last_frame(codec) -> bool:
    caps = av.codec.Capabilities
    return bool(codec.capabilities & (caps.small_last_frame | caps.variable_frame_size))


def _video_frames(stream, duration, fps, start_pts, noise):
    """Yield (stream, frame): a grey picture with a moving bar, or noise."""
    w, h = stream.width, stream.height
    rng = np.random.default_rng(1)
    base = np.full((h, w, 3), 96, np.uint8)
    for i in range(round(duration * fps)):
        if noise:
            img = base + rng.integers(0, noise, (h, w, 3), dtype=np.uint8)
        else:
            img = base.copy()
            img[: h // 4, : (i * 7) % w or 1] = 200  # frames differ, as in a real video
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i + round(start_pts * fps)
        frame.time_base = Fraction(1, fps)
        yield stream, frame


def make_phone_video(path: str | os.PathLike, *, minutes: float = 10, mbit: float = 20,
                     seed_seconds: float = 60) -> Path:
    """A phone-like 1080p30 H.264 (about `mbit` Mbit/s) + AAC (128 kbit/s,
    48 kHz stereo) faststart MP4 of `minutes`: `seed_seconds` are encoded
    (grey plus noise, so the encoder spends its bits), then copied again and
    again with shifted timestamps. Kept if it exists already. PyAV only: the
    test suite needs no ffmpeg command line."""
    path = Path(path)
    if path.exists():
        return path
    seed = path.with_suffix(".seed.mp4")
    seed_seconds = min(seed_seconds, minutes * 60)
    _encode_phone_seed(seed, seed_seconds, mbit)
    loops = max(1, round(minutes * 60 / seed_seconds))
    part = path.with_suffix(".part.mp4")
    with av.open(os.fspath(seed)) as src:
        # How far each stream's timestamps move per copy (its own time base).
        span = {s.index: 0 for s in src.streams}
        first: dict[int, int] = {}
        for p in src.demux():
            if p.pts is not None:
                first.setdefault(p.stream.index, p.pts)
                span[p.stream.index] = max(span[p.stream.index], p.pts + (p.duration or 0))
        span = {i: end - first.get(i, 0) for i, end in span.items()}
        with av.open(os.fspath(part), "w", options={"movflags": "+faststart"}) as out:
            streams = {s.index: out.add_stream_from_template(s) for s in src.streams}
            for k in range(loops):
                src.seek(0)
                for p in src.demux():
                    if p.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    assert p.pts is not None  # our own encoder's seed: every packet has both
                    shift = k * span[p.stream.index]
                    p.pts, p.dts = p.pts + shift, p.dts + shift
                    p.stream = streams[p.stream.index]
                    out.mux(p)
    part.replace(path)
    seed.unlink()
    return path


def _encode_phone_seed(path: Path, seconds: float, mbit: float) -> None:
    fps, size = 30, (1920, 1080)
    with av.open(os.fspath(path), "w") as out:
        video = _add_video(out, "mp4", "libx264", size, fps, {
            "maxrate": f"{mbit}M", "bufsize": f"{mbit}M"})
        video.codec_context.bit_rate = int(mbit * 1_000_000)
        audio = _add_audio(out, "aac", 48000, "stereo", None, 128000)
        out.start_encoding()
        frames = heapq.merge(_tone_frames(audio, 440.0, seconds, 0.0), _noise_frames(video, seconds, fps),
                             key=lambda sf: sf[1].time)
        for stream, frame in frames:
            out.mux(stream.encode(frame))
        for stream in (audio, video):
            out.mux(stream.encode(None))


def _noise_frames(stream, duration, fps, pictures: int = 15):
    """Yield (stream, frame): grey plus noise, `pictures` different ones in
    turn (made once: fresh noise per 1080p frame costs more than encoding it).
    Each differs from the one before, so every frame costs the encoder bits."""
    w, h = stream.width, stream.height
    rng = np.random.default_rng(1)
    pool = [np.full((h * 3 // 2, w), 96, np.uint8) + rng.integers(0, 40, (h * 3 // 2, w), dtype=np.uint8)
            for _ in range(pictures)]
    for i in range(round(duration * fps)):
        frame = av.VideoFrame.from_ndarray(pool[i % pictures], format="yuv420p")
        frame.pts, frame.time_base = i, Fraction(1, fps)
        yield stream, frame


def mp3_bytes(src, options=None, *, filename: str = "v.mp4", **kw) -> bytes:
    """converter.transcode.transcode() of `src` (a readable file) into memory:
    the MP3 as stored, its header patch applied. `kw`: transcode's own (overlap=...)."""
    from video2mp3.converter.transcode import transcode  # what is tested; this module needs only PyAV
    from video2mp3.media.v1 import media_pb2

    out = io.BytesIO()
    result = transcode(src, out, options or media_pb2.ConversionOptions(), filename=filename, **kw)
    data = bytearray(out.getvalue())
    if result.header_patch:
        at, patch = result.header_patch
        data[at:at + len(patch)] = patch
    return bytes(data)


class ReadSeekOnly:
    """A file with only read/seek/tell/close, like a GridOut or our GridFS
    readers: no fileno, no name, so PyAV goes through Python I/O."""

    def __init__(self, path) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - a file object the caller closes

    def read(self, n=-1):
        return self._f.read(n)

    def seek(self, pos, whence=0):
        return self._f.seek(pos, whence)

    def tell(self):
        return self._f.tell()

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_text_file(path: str | os.PathLike, text: str = "not a video\n" * 40) -> str:
    with open(path, "w") as f:
        f.write(text)
    return os.fspath(path)


def make_truncated(src: str | os.PathLike, dst: str | os.PathLike, keep: float = 0.5) -> str:
    """Copy the first `keep` fraction of a file, like an interrupted upload."""
    data = Path(src).read_bytes()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * keep)])
    return os.fspath(dst)


def _open(path_or_bytes):
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return av.open(io.BytesIO(bytes(path_or_bytes)))
    return av.open(os.fspath(path_or_bytes))


def decode_audio(path_or_bytes, track: int = 0) -> tuple[np.ndarray, int, int]:
    """Decode one audio track to (mono float64 samples, sample_rate, channels)."""
    with _open(path_or_bytes) as container:
        stream = container.streams.audio[track]
        chunks, rate, channels = [], stream.codec_context.sample_rate, 0
        for frame in container.decode(stream):
            arr = frame.to_ndarray().astype(np.float64)
            if not frame.format.is_planar:
                arr = arr.reshape(-1, frame.layout.nb_channels).T
            channels = frame.layout.nb_channels
            rate = frame.sample_rate
            chunks.append(arr.mean(axis=0))
    samples = np.concatenate(chunks) if chunks else np.zeros(0)
    return samples, rate, channels


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    if len(samples) == 0:
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def analyse_mp3(path_or_bytes) -> tuple[float, float, int, int]:
    """(duration_seconds, dominant_frequency_hz, sample_rate, channels) of an MP3.

    Decoded with PyAV, so the LAME header's encoder delay and padding are
    applied exactly as FFmpeg-based players apply them.
    """
    samples, rate, channels = decode_audio(path_or_bytes)
    return len(samples) / rate, dominant_frequency(samples, rate), rate, channels


def audio_duration(path_or_bytes, track: int = 0) -> float:
    """Seconds of audio FFmpeg decodes from a source file's track."""
    samples, rate, _ = decode_audio(path_or_bytes, track)
    return len(samples) / rate


def make_noise(path, seconds: float, rate: int = 48000, codec: str = "aac", level: float = 0.2,
               bursts: bool = False) -> str:
    """Stereo noise, not periodic, so a shift of even one sample shows. With
    bursts: quiet, with a loud click every second (peaks far above the loudness)."""
    rng = np.random.default_rng(7)
    with av.open(str(path), "w") as out:
        stream = cast("av.audio.stream.AudioStream", out.add_stream(codec, rate=rate, layout="stereo"))
        n, chunk = int(seconds * rate), 1024
        for start in range(0, n, chunk):
            k = min(chunk, n - start)
            pcm = (rng.standard_normal((2, k)) * level).astype(np.float32)
            if bursts:
                for i in range(k):
                    if (start + i) % rate < 48:
                        pcm[:, i] = 0.9 if (start + i) % 2 else -0.9
            frame = av.AudioFrame.from_ndarray(np.clip(pcm, -1, 1), format="fltp", layout="stereo")
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for packet in stream.encode(_format(frame, stream)):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return str(path)


def _format(frame, stream):
    fmt = stream.codec_context.format.name
    if fmt == "fltp":
        return frame
    return av.AudioResampler(format=fmt, layout="stereo", rate=frame.sample_rate).resample(frame)[0]


def ebur128(path_or_data) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) of a file or an MP3's bytes, by the ffmpeg command line."""
    source, data = (path_or_data, None) if isinstance(path_or_data, str) else ("-", path_or_data)
    run = subprocess.run([_FFMPEG, "-nostats", "-hide_banner", "-i", source, "-af", "ebur128=peak=true",
                          "-f", "null", "-"], input=data, capture_output=True, check=True)
    summary = run.stderr.decode().rsplit("Summary:", 1)[1]
    integrated = float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary).group(1))  # type: ignore[union-attr]
    peak = float(re.search(r"Peak:\s+(-?[\d.]+|-inf) dBFS", summary).group(1))  # type: ignore[union-attr]
    return integrated, peak


# Debian's ffmpeg (CONTRIBUTING.md, Setup): the outside measurement of loudness.
_FFMPEG = shutil.which("ffmpeg") or "ffmpeg"


if __name__ == "__main__":
    # `python -m testkit.media demo.mp4`: the README's 5-second demo video
    # (H.264 + a 440 Hz AAC tone).
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m testkit.media OUTPUT.mp4")
    print(make_media(sys.argv[1], video_codec="h264", audio_codec="aac", duration=5.0, freq=440.0))


def make_silence_ogg(path: str | os.PathLike, hours: float) -> Path:
    """Low-bitrate Opus silence in Ogg, the issue's "27 MB holding 20 hours":
    one minute encoded by the ffmpeg command line, then repeated by stream
    copy, so 20 hours take seconds to make (~18 MB)."""
    path = Path(path)
    one = path.with_name(f"{path.stem}-one-minute.ogg")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-t", "60",
                    "-c:a", "libopus", "-b:a", "6k", "-frame_duration", "120", str(one)], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(round(hours * 60) - 1), "-i", str(one),
                    "-c", "copy", str(path)], check=True)
    one.unlink()
    return path
