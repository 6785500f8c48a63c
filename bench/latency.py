"""make bench-latency: a short clip, from upload start to MP3 in hand, against the ffmpeg CLI.

Starts `make run` with its defaults (testkit/bigmesh.MakeRun, a fresh data
folder), signs up through REST, then alternates, round by round (order
rotated), on an idle mesh:

  mesh    a REST client's whole journey (bench/journey.py): POST /v1/videos,
          WatchJob until DONE, GET the MP3; the clock stops at its last byte
  ffmpeg  `ffmpeg -i CLIP -vn -c:a libmp3lame -b:a 192k out.mp3` on the local file

The clip is `make bench-convert`'s 10-second 720p H.264 + AAC MP4 (PyAV, i.e.
FFmpeg's muxer: frame-interleaved, index at the end). Prints each round, the
medians and, last, the ratio mesh / ffmpeg against the goal (issue 21: <= 1.5).

Options (environment):
  LATENCY_ROUNDS 9     rounds (each: one mesh journey and one ffmpeg run)
  LATENCY_GOAL 1.5     the ratio the last line is judged against
"""
from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.convert import ensure_ffmpeg, ffmpeg_cmd, make_inputs
from bench.e2e import settle
from bench.journey import Journey
from testkit.bigmesh import MakeRun
from testkit.clients import RestClient
from video2mp3.core.settings import load, setting

CACHE = Path(tempfile.gettempdir()) / "video2mp3-bench"


@dataclasses.dataclass(frozen=True)
class LatencySettings:
    """`make bench-latency`'s knobs (the docstring's Options)."""
    rounds: int = setting("LATENCY_ROUNDS", 9, minimum=1)
    goal: float = setting("LATENCY_GOAL", 1.5)


def main() -> int:
    opts = load(LatencySettings)
    ffmpeg = ensure_ffmpeg()
    clip = make_inputs(CACHE)["short"]
    out = CACHE / "latency-ffmpeg-out.mp3"

    def run_ffmpeg() -> float:
        t = time.perf_counter()
        subprocess.run(ffmpeg_cmd(ffmpeg, clip, out), check=True)
        return time.perf_counter() - t

    data_dir = Path(tempfile.mkdtemp(prefix="video2mp3-latency-"))
    mesh_s: list[float] = []
    parts: list[tuple[float, float]] = []  # (upload answered, DONE seen) per mesh round
    ff_s: list[float] = []
    with MakeRun(data_dir / "mongo", log=data_dir / "make-run.log") as run:
        rest = RestClient(run.rest_base_url)
        rest.sign_up_and_login()
        user = Journey(run.rest_base_url, rest.token)
        user.run(clip)  # warm-up: imports, connections, the first job's one-offs
        run_ffmpeg()
        print(f"{clip.name} ({clip.stat().st_size / 1e6:.1f} MB), {opts.rounds} rounds", flush=True)
        for i in range(opts.rounds):
            for who in (("mesh", "ffmpeg") if i % 2 == 0 else ("ffmpeg", "mesh")):
                settle(run)
                if who == "ffmpeg":
                    ff_s.append(run_ffmpeg())
                else:
                    t = user.run(clip)
                    mesh_s.append(t.total_s)
                    parts.append((t.upload_s, t.done_s))
            up, done = parts[-1]
            print(f"  round {i + 1}: ffmpeg {ff_s[-1]:.3f} s; mesh {mesh_s[-1]:.3f} s "
                  f"(answered {up:.3f}, DONE seen {done:.3f}, MP3 in hand {mesh_s[-1]:.3f})", flush=True)
    mesh, ff = statistics.median(mesh_s), statistics.median(ff_s)
    up = statistics.median(p[0] for p in parts)
    done = statistics.median(p[1] - p[0] for p in parts)
    fetch = statistics.median(m - p[1] for m, p in zip(mesh_s, parts, strict=True))
    ratio = mesh / ff
    print(f"\nmedians: upload {up:.3f} s, answer -> DONE seen {done:.3f} s, DONE -> MP3 in hand {fetch:.3f} s")
    print(f"ffmpeg CLI {ff:.3f} s (min {min(ff_s):.3f}); mesh {mesh:.3f} s (min {min(mesh_s):.3f})")
    ok = ratio <= opts.goal
    print(f"bench-latency: upload start -> MP3 in hand / ffmpeg = {mesh:.3f} s / {ff:.3f} s = {ratio:.2f} "
          f"(<= {opts.goal}: {'goal met' if ok else 'GOAL MISSED'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
