"""make bench-load: many users at once, against converting the same files with ffmpeg yourself.

Generates, once (cached in $TMPDIR/video2mp3-bench/load): LOAD_FILES videos of
LOAD_MINUTES each, 480p H.264 + AAC at ~2.4 Mbit/s (54 MB for 3 minutes),
written by the ffmpeg command line, so frame-interleaved with the index at
the end, as ffmpeg and every tool built on it writes them (one is encoded;
the others are copies of its streams with their own title, so no two files
are the same bytes). Then starts `make run` with its defaults (a fresh data
folder) and times, side by side in one run:

  mesh    LOAD_CLIENTS REST clients at once (one account each), taking the
          files in turn from one queue, each job upload -> WatchJob until
          DONE -> download the MP3 (bench/journey.py); from the first upload's
          start to the last MP3 in hand, and each job's own time
  ffmpeg  `ffmpeg -i F -vn -c:a libmp3lame -b:a 192k out.mp3` over the same
          files, LOAD_FFMPEG_AT_ONCE at a time (one per core)

The two alternate (order rotated) LOAD_ROUNDS times; medians. Prints p50 and
p95 of the mesh's per-job times and, last, the ratio mesh / ffmpeg against the
goal (issue 21: <= 1.25).

Options (environment):
  LOAD_FILES 24            how many files
  LOAD_CLIENTS 8           concurrent REST clients
  LOAD_MINUTES 3           length of each file
  LOAD_FFMPEG_AT_ONCE 2    ffmpeg processes at once
  LOAD_ROUNDS 1            rounds of both
  LOAD_GOAL 1.25           the ratio the last line is judged against
A quick look: LOAD_FILES=6 LOAD_CLIENTS=4 LOAD_MINUTES=1 make bench-load
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from bench.convert import ensure_ffmpeg, ffmpeg_cmd
from bench.e2e import settle
from bench.journey import Journey, Timing
from testkit.bigmesh import MakeRun
from testkit.clients import RestClient
from video2mp3.core.settings import load, setting

CACHE = Path(tempfile.gettempdir()) / "video2mp3-bench" / "load"


@dataclasses.dataclass(frozen=True)
class LoadSettings:
    """`make bench-load`'s knobs (the docstring's Options)."""
    files: int = setting("LOAD_FILES", 24, minimum=1)
    clients: int = setting("LOAD_CLIENTS", 8, minimum=1)
    minutes: float = setting("LOAD_MINUTES", 3.0)
    ffmpeg_at_once: int = setting("LOAD_FFMPEG_AT_ONCE", 2, minimum=1)
    rounds: int = setting("LOAD_ROUNDS", 1, minimum=1)
    goal: float = setting("LOAD_GOAL", 1.25)


# --- Inputs ----------------------------------------------------------------------

def make_files(ffmpeg: str, n: int, minutes: float) -> list[Path]:
    """n ffmpeg-written 480p files of `minutes`, made once."""
    CACHE.mkdir(parents=True, exist_ok=True)
    seed = CACHE / f"seed-{minutes:g}min-480p.mp4"
    if not seed.exists():
        print(f"encoding {seed.name} with ffmpeg ...", flush=True)
        t = time.perf_counter()
        part = seed.with_suffix(".part.mp4")
        seconds = f"{minutes * 60:g}"
        subprocess.run([
            ffmpeg, "-nostdin", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size=854x480:rate=25:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
            # Noise, so the encoder spends its bits as on a real video.
            "-vf", "noise=alls=24:allf=t", "-ac", "2",
            "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "2200k", "-maxrate", "2200k",
            "-bufsize", "2200k", "-c:a", "aac", "-b:a", "128k", str(part)], check=True)
        part.rename(seed)
        print(f"  {seed.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t:.0f} s", flush=True)
    paths = []
    for i in range(n):
        path = CACHE / f"load-{minutes:g}min-{i + 1:02d}.mp4"
        if not path.exists():
            part = path.with_suffix(".part.mp4")
            subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(seed), "-c", "copy",
                            "-metadata", f"title=load {i + 1}", str(part)], check=True)
            part.rename(path)
        paths.append(path)
    return paths


# --- The two contenders ------------------------------------------------------------

def run_ffmpeg_all(ffmpeg: str, files: list[Path], at_once: int, out_dir: Path) -> float:
    def one(i_path: tuple[int, Path]) -> None:
        i, path = i_path
        subprocess.run(ffmpeg_cmd(ffmpeg, path, out_dir / f"ffmpeg-{i}.mp3"), check=True)

    t = time.perf_counter()
    with ThreadPoolExecutor(at_once) as pool:
        list(pool.map(one, enumerate(files)))
    return time.perf_counter() - t


def run_mesh_all(users: list[Journey], files: list[Path]) -> tuple[float, list[Timing]]:
    """Every file through the mesh, len(users) clients at once: (wall seconds, per job timings)."""
    todo: queue.Queue[Path] = queue.Queue()
    for f in files:
        todo.put(f)
    timings: list[Timing] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(user: Journey) -> None:
        while True:
            try:
                path = todo.get_nowait()
            except queue.Empty:
                return
            try:
                t = user.run(path)
            except BaseException as e:  # noqa: BLE001 - reported after the run
                with lock:
                    errors.append(e)
                return
            with lock:
                timings.append(t)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(u,)) for u in users]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} job(s) failed; the first: {errors[0]}")
    return wall, timings


def cpu_by_process(run: MakeRun) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each of the mesh's processes, by name."""
    out: dict[str, float] = {}
    for name, pids in run.pids().items():
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                out[name] = out.get(name, 0.0) + sum(psutil.Process(pid).cpu_times()[:2])
    return out


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


# --- Main ------------------------------------------------------------------------------

def main() -> int:
    opts = load(LoadSettings)
    ffmpeg = ensure_ffmpeg()
    files = make_files(ffmpeg, opts.files, opts.minutes)
    size = sum(f.stat().st_size for f in files)
    print(f"CPUs: {os.cpu_count()}; {len(files)} files of {opts.minutes:g} min, {size / 1e6:.0f} MB in all; "
          f"{opts.clients} REST clients vs ffmpeg {opts.ffmpeg_at_once} at a time", flush=True)

    data_dir = Path(tempfile.mkdtemp(prefix="video2mp3-load-"))
    mesh_s: list[float] = []
    ff_s: list[float] = []
    jobs: list[float] = []
    try:
        with MakeRun(data_dir / "mongo", log=data_dir / "make-run.log") as run:
            users = []
            for _ in range(opts.clients):
                rest = RestClient(run.rest_base_url)
                rest.sign_up_and_login()
                users.append(Journey(run.rest_base_url, rest.token))
            users[0].run(files[0])  # warm-up: imports, connections, the first job's one-offs
            for i in range(opts.rounds):
                for who in (("mesh", "ffmpeg") if i % 2 == 0 else ("ffmpeg", "mesh")):
                    settle(run)
                    if who == "ffmpeg":
                        before = resource.getrusage(resource.RUSAGE_CHILDREN)
                        ff_s.append(run_ffmpeg_all(ffmpeg, files, opts.ffmpeg_at_once, data_dir))
                        after = resource.getrusage(resource.RUSAGE_CHILDREN)
                        used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                        print(f"  CPU seconds of ffmpeg: {used:.1f}", flush=True)
                    else:
                        cpu0 = cpu_by_process(run)
                        wall, timings = run_mesh_all(users, files)
                        cpu = {k: v - cpu0.get(k, 0.0) for k, v in cpu_by_process(run).items()}
                        print("  CPU seconds by process: " + ", ".join(
                            f"{k} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
                            + f" (all {sum(cpu.values()):.1f} in {wall:.1f} s of 2 cores)", flush=True)
                        mesh_s.append(wall)
                        jobs += [t.total_s for t in timings]
                        print(f"  mesh round {i + 1}: last MP3 in hand after {wall:.1f} s; per job "
                              f"p50 {percentile([t.total_s for t in timings], 50):.1f} s, "
                              f"p95 {percentile([t.total_s for t in timings], 95):.1f} s", flush=True)
                print(f"  round {i + 1}: ffmpeg {ff_s[-1]:.1f} s, mesh {mesh_s[-1]:.1f} s", flush=True)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    mesh, ff = statistics.median(mesh_s), statistics.median(ff_s)
    ratio = mesh / ff
    ok = ratio <= opts.goal
    print(f"\nper job (upload start -> MP3 in hand): p50 {percentile(jobs, 50):.1f} s, "
          f"p95 {percentile(jobs, 95):.1f} s, max {max(jobs):.1f} s ({len(jobs)} jobs)")
    print(f"bench-load: {len(files)} files, {opts.clients} clients, last MP3 / ffmpeg {opts.ffmpeg_at_once} at a "
          f"time = {mesh:.1f} s / {ff:.1f} s = {ratio:.2f} (<= {opts.goal}: {'goal met' if ok else 'GOAL MISSED'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
