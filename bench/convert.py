"""make bench-convert: the converter's own code path against the ffmpeg CLI.

    python -m bench.convert [--long-runs 3] [--short-runs 7] [--dir DIR]

1. Needs the ffmpeg command line (Debian: `apt-get install ffmpeg`; CONTRIBUTING.md).
2. Generates, once (cached in DIR, default $TMPDIR/video2mp3-bench): a
   10-minute 720p H.264 + AAC 48 kHz stereo MP4, a 10-second clip of the same
   kind and a 10-minute MP3. The video is cheap to make (10 fps, ultrafast,
   light noise so it still weighs ~2.7 Mbit/s like a real upload).
3. Times, alternating run by run, medians:
   converter = transcode() in this process, file -> byte-counting sink, as a
               lone job runs it: helper threads and one LAME encoder per CPU
               (converter/split_encode.py); also with one encoder, and with
               no helper threads at all (a worker's setting under a backlog);
   ffmpeg    = `ffmpeg -i IN -vn -c:a libmp3lame -b:a 192k OUT` (a process).
   Then the MP3 fast path (packet copy) against re-encoding the same MP3
   (one encoder, as the goal was set; and on every core, shown beside it).
4. Peak RSS of one conversion, each in a process of its own, started from a
   tiny launcher that reads its RUSAGE_CHILDREN: the converter's and ffmpeg's.

Goals (issue #3): converter/ffmpeg <= 1.0 on 10 minutes, <= 0.5 on 10 seconds,
fast path >= 20x faster than re-encoding. The machine is noisy (CPU speed
varies by 10-15 % from run to run here), so read the ratios with that in mind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypedDict

from video2mp3.converter import lame
from video2mp3.converter.transcode import transcode
from video2mp3.media.v1 import media_pb2

# Bump when the generated media change, so old caches are not reused.
MEDIA_VERSION = 1


class CountingSink:
    """A write-only sink that keeps nothing but the byte count."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)


# --- Setup ------------------------------------------------------------------------

def ensure_ffmpeg() -> str:
    """The ffmpeg command line the benchmarks compare against; installing it is the machine's business."""
    found = shutil.which("ffmpeg")
    if not found:
        sys.exit("the benchmarks compare against the ffmpeg command line, which is not installed "
                 "(Debian: apt-get install ffmpeg)")
    return found


def make_inputs(workdir: Path) -> dict[str, Path]:
    from testkit.media import make_media  # the test helper that makes media with PyAV

    workdir.mkdir(parents=True, exist_ok=True)
    video = dict(video_codec="h264", video_size=(1280, 720), fps=10, video_noise=12,
                 audio_codec="aac", sample_rate=48000, layout="stereo")
    wanted: dict[str, tuple[str, dict[str, Any]]] = {  # file name, make_media's arguments
        "long": (f"long10min_v{MEDIA_VERSION}.mp4", dict(duration=600.0, **video)),
        "short": (f"clip10s_v{MEDIA_VERSION}.mp4", dict(duration=10.0, **video)),
        "mp3": (f"song10min_v{MEDIA_VERSION}.mp3", dict(duration=600.0, video_codec=None,
                                                       audio_codec="mp3", sample_rate=44100,
                                                       audio_bit_rate=192_000)),
    }
    paths = {}
    for key, (name, kw) in wanted.items():
        path = workdir / name
        if not path.exists():
            print(f"generating {path} ...", end=" ", flush=True)
            t = time.perf_counter()
            tmp = path.with_suffix(".part" + path.suffix)
            make_media(tmp, **kw)
            tmp.rename(path)
            print(f"{time.perf_counter() - t:.0f} s")
        paths[key] = path
    return paths


# --- Timed runs ------------------------------------------------------------------------

class Parallelism(TypedDict):
    """transcode()'s keyword arguments for how a job runs."""

    overlap: bool
    encoders: int


LONE_JOB = Parallelism(overlap=True, encoders=os.cpu_count() or 1)  # what converter/task.py gives a lone job


def run_converter(path: Path, **kw: Any) -> float:
    """One conversion with transcode()'s keyword arguments `kw` over LONE_JOB."""
    opts = media_pb2.ConversionOptions()
    args: dict[str, Any] = {**LONE_JOB, **kw}
    t = time.perf_counter()
    with open(path, "rb") as src:
        transcode(src, CountingSink(), opts, filename=path.name, **args)
    return time.perf_counter() - t


def ffmpeg_cmd(ffmpeg: str, path: Path, out: Path) -> list[str]:
    return [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(path),
            "-vn", "-c:a", "libmp3lame", "-b:a", "192k", str(out)]


def run_ffmpeg(ffmpeg: str, path: Path, out: Path) -> float:
    t = time.perf_counter()
    subprocess.run(ffmpeg_cmd(ffmpeg, path, out), check=True)
    return time.perf_counter() - t


def alternate(runs: int, contenders: dict) -> dict[str, float]:
    """Median seconds of each contender, run in turn, order rotated per round."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for i in range(runs):
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(contenders[name]())
    for name, values in times.items():
        print(f"    {name:<28} " + " ".join(f"{v:6.3f}" for v in values)
              + f"   median {statistics.median(values):.3f} s")
    return {name: statistics.median(values) for name, values in times.items()}


# --- Peak memory ------------------------------------------------------------------------

# A minimal launcher between us and the measured process: Linux carries a
# process's peak RSS over fork and exec, so a child of this (big) process would
# report at least our own size. The launcher is a bare interpreter (~10 MB).
_LAUNCHER = (
    "import os, resource, sys\n"
    "pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)\n"
    "_, status = os.waitpid(pid, 0)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, os.waitstatus_to_exitcode(status))\n"
)


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak RSS (MB) of one run of `cmd`, through the launcher above."""
    exe = shutil.which(cmd[0]) or cmd[0]
    out = subprocess.run([sys.executable, "-I", "-S", "-c", _LAUNCHER, exe, *cmd[1:]],
                         capture_output=True, text=True, check=True).stdout.split()
    maxrss_kib, code = int(out[-2]), int(out[-1])
    if code:
        raise RuntimeError(f"{cmd[0]} exited {code}")
    return maxrss_kib / 1024


def child_convert(path: str) -> None:
    """Entry point of the RSS child: one conversion, nothing else."""
    sink = CountingSink()
    with open(path, "rb") as src:
        result = transcode(src, sink, media_pb2.ConversionOptions(), filename=os.path.basename(path),
                           **LONE_JOB)
    print(json.dumps({"bytes": sink.bytes, "seconds": result.duration_seconds}))


# --- Main ------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "goal met" if ok else "GOAL MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long-runs", type=int, default=3)
    parser.add_argument("--short-runs", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "video2mp3-bench")
    parser.add_argument("--child-convert", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_convert:
        return child_convert(args.child_convert)

    ffmpeg = ensure_ffmpeg()
    version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"{version}\nCPUs: {os.cpu_count()}   converter LAME build: {lame.backend_name()}"
          f" (lameenc fallback always present)")
    inputs = make_inputs(args.dir)
    out = args.dir / "ffmpeg-out.mp3"

    # Warm-up (imports, page cache) so the first timed run is not special.
    run_converter(inputs["short"])
    run_ffmpeg(ffmpeg, inputs["short"], out)

    results = {}
    for key, runs, label in (("long", args.long_runs, "10-minute 720p H.264 + AAC"),
                             ("short", args.short_runs, "10-second clip")):
        path = inputs[key]
        print(f"\n{label}: {path.name} ({path.stat().st_size / 1e6:.0f} MB), {runs} runs each")
        contenders = {
            "converter": lambda p=path: run_converter(p),
            "ffmpeg": lambda p=path: run_ffmpeg(ffmpeg, p, out),
            "converter, one encoder": lambda p=path: run_converter(p, encoders=1),
            "converter, one thread": lambda p=path: run_converter(p, overlap=False, encoders=1),
        }
        if lame.backend_name() != "lameenc":
            contenders["converter, lameenc build"] = lambda p=path: run_converter(p, encoder="lameenc")
        results[key] = alternate(runs, contenders)

    print(f"\nMP3 fast path: {inputs['mp3'].name}")
    # The goal (issue #3) predates encoding on every core: it is measured
    # against one encoder, and the lone job's re-encode is shown beside it.
    fast = alternate(args.long_runs, {
        "copy (fast path)": lambda: run_converter(inputs["mp3"]),
        "re-encode": lambda: run_converter(inputs["mp3"], copy_mp3=False, encoders=1),
        "re-encode, every core": lambda: run_converter(inputs["mp3"], copy_mp3=False),
    })

    print("\npeak RSS of one conversion (a process of its own each):")
    me = [sys.executable, "-m", "bench.convert", "--child-convert"]
    rss = {
        "converter 10 s": peak_rss_mb([*me, str(inputs["short"])]),
        "converter 10 min": peak_rss_mb([*me, str(inputs["long"])]),
        "ffmpeg 10 s": peak_rss_mb(ffmpeg_cmd(ffmpeg, inputs["short"], out)),
        "ffmpeg 10 min": peak_rss_mb(ffmpeg_cmd(ffmpeg, inputs["long"], out)),
    }
    for name, mb in rss.items():
        print(f"    {name:<20} {mb:7.1f} MB")

    long_ratio = results["long"]["converter"] / results["long"]["ffmpeg"]
    short_ratio = results["short"]["converter"] / results["short"]["ffmpeg"]
    speedup = fast["re-encode"] / fast["copy (fast path)"]
    print("\nsummary")
    print(f"    10 min: converter/ffmpeg = {long_ratio:.2f}   (<= 1.0: {verdict(long_ratio <= 1.0)})")
    for variant in ("one encoder", "one thread"):
        print(f"            {variant}: converter/ffmpeg = "
              f"{results['long']['converter, ' + variant] / results['long']['ffmpeg']:.2f}")
    print(f"    10 s:   converter/ffmpeg = {short_ratio:.2f}   (<= 0.5: {verdict(short_ratio <= 0.5)})")
    print(f"    MP3 fast path: {speedup:.0f}x faster than re-encoding with one encoder   "
          f"(>= 20x: {verdict(speedup >= 20)}); "
          f"{fast['re-encode, every core'] / fast['copy (fast path)']:.0f}x on every core")
    print(f"    peak RSS: converter {rss['converter 10 s']:.0f} MB (10 s) / {rss['converter 10 min']:.0f} MB"
          f" (10 min); ffmpeg {rss['ffmpeg 10 s']:.0f} MB / {rss['ffmpeg 10 min']:.0f} MB")


if __name__ == "__main__":
    main()
