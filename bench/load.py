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

The two alternate (order rotated) LOAD_ROUNDS times; medians. Then, once, the
store's share alone: the same files written into make run's GridFS as the
gateway writes an upload, read back whole as the converter reads a
frame-interleaved file, and deleted, LOAD_CLIENTS at a time; its CPU seconds
give the floor printed before the last line: ffmpeg's own work plus only
that, on the same two cores, against ffmpeg's time (the conversions cost what
ffmpeg's do: the same LAME and decoder, bench-convert). Prints p50 and p95 of
the mesh's per-job times and, last, the ratio mesh / ffmpeg against the goal
(issue 21: <= 1.25).

Options (environment):
  LOAD_FILES 24            how many files
  LOAD_CLIENTS 8           concurrent REST clients
  LOAD_MINUTES 3           length of each file
  LOAD_FFMPEG_AT_ONCE 2    ffmpeg processes at once
  LOAD_ROUNDS 1            rounds of both
  LOAD_GOAL 1.25           the ratio the last line is judged against
  LOAD_STORE_ALONE 1       0: skip the store's share alone (and the floor)
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from bench.convert import ensure_ffmpeg, ffmpeg_cmd
from bench.e2e import read_whole, settle, store_client, store_raw
from bench.journey import Journey, Timing
from testkit.bigmesh import MakeRun
from testkit.clients import RestClient
from video2mp3.core.settings import load, setting
from video2mp3.storage.gridfs_download import delete_file
from video2mp3.storage.mongo import VIDEOS_BUCKET

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
    store_alone: bool = setting("LOAD_STORE_ALONE", True)


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


def run_store_alone(run: MakeRun, files: list[Path], at_once: int) -> tuple[float, dict[str, float]]:
    """The store's share of the journeys and nothing else, `at_once` files at a
    time: every file stored, then every one read back whole, then every one
    deleted: (wall seconds, the store's CPU seconds by phase)."""
    client = store_client(run)
    db = client["video2mp3"]
    cpu: dict[str, float] = {}
    try:
        with ThreadPoolExecutor(at_once) as pool:
            def phase(name: str, work: Callable[[Any], Any], items: list) -> list:
                before = cpu_by_process(run).get("mongo", 0.0)
                out = list(pool.map(work, items))
                cpu[name] = cpu_by_process(run).get("mongo", 0.0) - before
                return out

            t = time.perf_counter()
            file_ids = phase("stored", lambda path: store_raw(db, path), files)
            phase("read back", lambda file_id: read_whole(db, file_id), file_ids)
            phase("deleted", lambda file_id: delete_file(db, VIDEOS_BUCKET, file_id), file_ids)
            return time.perf_counter() - t, cpu
    finally:
        client.close()


def own_cpu() -> float:
    """CPU seconds this process (the REST clients) has used so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


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
    ff_cpu: list[float] = []
    store_cpu: float | None = None
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
                        ff_cpu.append(used)
                        print(f"  CPU seconds of ffmpeg: {used:.1f}", flush=True)
                    else:
                        cpu0, clients0 = cpu_by_process(run), own_cpu()
                        wall, timings = run_mesh_all(users, files)
                        cpu = {k: v - cpu0.get(k, 0.0) for k, v in cpu_by_process(run).items()}
                        print("  CPU seconds by process: " + ", ".join(
                            f"{k} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
                            + f" (all {sum(cpu.values()):.1f} in {wall:.1f} s of 2 cores; "
                            f"the REST clients beside them {own_cpu() - clients0:.1f})", flush=True)
                        mesh_s.append(wall)
                        jobs += [t.total_s for t in timings]
                        print(f"  mesh round {i + 1}: last MP3 in hand after {wall:.1f} s; per job "
                              f"p50 {percentile([t.total_s for t in timings], 50):.1f} s, "
                              f"p95 {percentile([t.total_s for t in timings], 95):.1f} s", flush=True)
                print(f"  round {i + 1}: ffmpeg {ff_s[-1]:.1f} s, mesh {mesh_s[-1]:.1f} s", flush=True)
            if opts.store_alone:
                settle(run)
                wall, phases = run_store_alone(run, files, opts.clients)
                store_cpu = sum(phases.values())
                print(f"  store alone: the {len(files)} files stored, read back and deleted, {opts.clients} at a "
                      f"time: {wall:.1f} s, CPU seconds of the store {store_cpu:.1f} ("
                      + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()) + ")", flush=True)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    mesh, ff = statistics.median(mesh_s), statistics.median(ff_s)
    ratio = mesh / ff
    ok = ratio <= opts.goal
    if store_cpu is not None:
        # The mesh does at least ffmpeg's work plus the store's share, on the
        # cores ffmpeg's side keeps busy for `ff` seconds.
        f_cpu, cores = statistics.median(ff_cpu), os.cpu_count() or 1
        floor = (f_cpu + store_cpu) / (cores * ff)
        print(f"\nfloor: ffmpeg's CPU + the store's alone on {cores} cores = ({f_cpu:.1f} + {store_cpu:.1f}) / "
              f"{cores} / {ff:.1f} s = {floor:.2f} (the store's share by itself: {store_cpu / (cores * ff):.2f} "
              "of ffmpeg's time)")
    print(f"\nper job (upload start -> MP3 in hand): p50 {percentile(jobs, 50):.1f} s, "
          f"p95 {percentile(jobs, 95):.1f} s, max {max(jobs):.1f} s ({len(jobs)} jobs)")
    print(f"bench-load: {len(files)} files, {opts.clients} clients, last MP3 / ffmpeg {opts.ffmpeg_at_once} at a "
          f"time = {mesh:.1f} s / {ff:.1f} s = {ratio:.2f} (<= {opts.goal}: {'goal met' if ok else 'GOAL MISSED'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
