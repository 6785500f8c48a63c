"""make bench-loudness: what loudness normalisation costs per minute of audio.

    python -m bench.loudness [--minutes 5] [--runs 3]

Converts M minutes of 48 kHz stereo AAC (audio-only m4a of noise and a tone,
generated once, cached in $TMPDIR/video2mp3-bench) to a null sink with
transcode(), one encoder and no helper threads (a worker's setting under a
backlog, so CPU seconds are the conversion's own), alternating run by run:

    plain     = 192 kbps CBR, as every job
    loudness  = the same with loudness_lufs=-16 (ebur128 first pass, then
                volume (+ alimiter when peaks need it) in the encode pass)
    measure   = the first pass alone (decode, resample, ebur128 with true peak)

and prints the medians of CPU seconds and wall seconds per minute of audio,
then LAST the cost of normalisation: extra CPU seconds per minute of audio
and the ratio loudness/plain. The machine is shared and noisy: read the
figures with that in mind.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from testkit.media import ReadSeekOnly, make_noise
from video2mp3.converter import transcode as tc
from video2mp3.media.v1 import media_pb2

CACHE = Path(tempfile.gettempdir()) / "video2mp3-bench"


class _Null:
    def write(self, data) -> None:
        pass


def source(minutes: float) -> Path:
    path = CACHE / f"loudness-{minutes:g}min.m4a"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        make_noise(path.with_suffix(".tmp.m4a"), minutes * 60, level=0.05)
        path.with_suffix(".tmp.m4a").rename(path)
    return path


def _timed(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    path = source(args.minutes)

    def convert(**options):
        with ReadSeekOnly(path) as src:
            tc.transcode(src, _Null(), media_pb2.ConversionOptions(**options), overlap=False, encoders=1)

    def measure():
        with ReadSeekOnly(path) as src:
            tc._measure(src, media_pb2.ConversionOptions(loudness_lufs=-16), None)

    cases = {"plain": convert, "loudness": lambda: convert(loudness_lufs=-16), "measure": measure}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(args.runs):
        for name, fn in cases.items():
            times[name].append(_timed(fn))
    per_min = {name: (statistics.median(c for c, _ in t) / args.minutes,
                      statistics.median(w for _, w in t) / args.minutes) for name, t in times.items()}
    print(f"{args.minutes:g} min of 48 kHz stereo AAC, {args.runs} runs each, medians per minute of audio:")
    for name, (cpu, wall) in per_min.items():
        print(f"  {name:9s} {cpu:6.3f} CPU s/min  {wall:6.3f} wall s/min")
    extra = per_min["loudness"][0] - per_min["plain"][0]
    print(f"loudness normalisation: +{extra:.3f} CPU s per minute of audio, "
          f"loudness/plain {per_min['loudness'][0] / per_min['plain'][0]:.2f}")


if __name__ == "__main__":
    main()
