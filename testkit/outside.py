"""The ffmpeg and ffprobe command line tools as outside witnesses.

Tests of chapters and cover pictures make their sources with the ffmpeg CLI
(chapters from an ffmetadata file, the way people add them) and measure the
MP3s with ffprobe and ffmpeg, so what is checked is what another program
reads, not what our own code believes it wrote. Debian's ffmpeg package is a
development requirement (CONTRIBUTING.md); a missing one fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import av


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is needed for this test: apt-get install ffmpeg"
    return path


def make_chaptered_video(
    path: str | os.PathLike,
    chapters: list[tuple[int, int, str]],
    *,
    black_ms: int = 0,
    rate: int = 44100,
    size: str = "320x180",
    cover: str | os.PathLike | None = None,
    seconds: float | None = None,
) -> Path:
    """A video (H.264 + AAC tone; MP4, MKV... by extension) whose chapters are
    (start_ms, end_ms, title); it lasts until the last chapter's end, or `seconds`. Its
    first `black_ms` are black, the rest a busy test pattern, a keyframe
    every second. `cover`: an image attached as the file's cover picture."""
    path = Path(path)
    seconds = seconds or chapters[-1][1] / 1000
    meta = path.with_suffix(".ffmetadata")
    meta.write_text(
        ";FFMETADATA1\ntitle=Chaptered\n"
        + "".join(f"[CHAPTER]\nTIMEBASE=1/1000\nSTART={s}\nEND={e}\ntitle={t}\n" for s, e, t in chapters),
        encoding="utf-8",
    )
    black = black_ms / 1000
    video = (
        (
            f"color=black:size={size}:rate=25:duration={black},"
            f"format=yuv420p[b];testsrc2=size={size}:rate=25:duration={seconds - black},format=yuv420p[t];"
            "[b][t]concat=n=2:v=1:a=0[v]"
        )
        if black_ms
        else f"testsrc2=size={size}:rate=25:duration={seconds}[v]"
    )
    argv = [
        _tool("ffmpeg"),
        "-v",
        "error",
        "-y",
        "-filter_complex",
        video,
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=440:duration={seconds}:sample_rate={rate}",
        "-i",
        str(meta),
    ]
    maps = ["-map", "[v]", "-map", "0:a"]
    if cover is not None:
        argv += ["-i", str(cover)]
        maps += ["-map", "2:v"]
    argv += [
        *maps,
        "-map_metadata",
        "1",
        "-map_chapters",
        "1",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "25",
        "-c:a",
        "aac",
    ]
    if cover is not None:
        argv += ["-c:v:1", "copy", "-disposition:v:1", "attached_pic"]
    subprocess.run([*argv, str(path)], check=True)
    meta.unlink()
    return path


def make_picture(path: str | os.PathLike, size: str = "800x800") -> Path:
    """A JPEG test pattern (a cover to attach)."""
    subprocess.run(
        [
            _tool("ffmpeg"),
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size}",
            "-frames:v",
            "1",
            str(path),
        ],
        check=True,
    )
    return Path(path)


def probe(path: str | os.PathLike) -> dict:
    """ffprobe's streams, chapters and format tags as JSON."""
    out = subprocess.run(
        [_tool("ffprobe"), "-v", "error", "-of", "json", "-show_streams", "-show_chapters", "-show_format", str(path)],
        check=True,
        capture_output=True,
    ).stdout
    return json.loads(out)


def chapters(path: str | os.PathLike) -> list[tuple[int, int, str]]:
    """(start_ms, end_ms, title) of each chapter ffprobe finds."""
    return [
        (round(float(c["start_time"]) * 1000), round(float(c["end_time"]) * 1000), c.get("tags", {}).get("title", ""))
        for c in probe(path)["chapters"]
    ]


def decoded_samples(path: str | os.PathLike) -> int:
    """Samples per channel ffmpeg decodes (it honours the LAME tag's delay and padding)."""
    pcm = subprocess.run(
        [_tool("ffmpeg"), "-v", "error", "-i", str(path), "-map", "0:a", "-ac", "1", "-f", "s16le", "-"],
        check=True,
        capture_output=True,
    ).stdout
    return len(pcm) // 2


def attached_picture(path: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """The MP3's cover picture as ffmpeg extracts it (stream copy) into `dst`."""
    subprocess.run(
        [
            _tool("ffmpeg"),
            "-v",
            "error",
            "-y",
            "-i",
            str(path),
            "-map",
            "0:v",
            "-c",
            "copy",
            "-frames:v",
            "1",
            str(dst),
        ],
        check=True,
    )
    return Path(dst)


def picture_stats(path) -> tuple[int, int, float, float]:
    """(width, height, mean luma, luma standard deviation) of an image, decoded by PyAV."""
    with av.open(path if hasattr(path, "read") else str(path)) as c:
        frame = next(c.decode(video=0))
    grey = frame.reformat(format="gray")
    plane = grey.planes[0]
    raw = bytes(plane)
    pixels = b"".join(raw[y * plane.line_size : y * plane.line_size + grey.width] for y in range(grey.height))
    mean = sum(pixels) / len(pixels)
    std = (sum((p - mean) ** 2 for p in pixels) / len(pixels)) ** 0.5
    return frame.width, frame.height, mean, std
