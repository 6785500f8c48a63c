"""`make bench-day`: a day of use through `make run`, then what the store kept.

Starts `python -m localmesh` (make run with its embedded defaults, a fresh
data folder; testkit/bigmesh.MakeRun) and puts a day's worth of real work
through it, every video deleted once its job is DONE (make run's default
retention, VIDEO_RETENTION=0) and every MP3 kept:

1. 720p videos (H.264 + AAC, DAY_MINUTES long), uploaded one after another
   through REST, each waited for until DONE;
2. phone-sized videos (1080p ~DAY_PHONE_MBIT Mbit/s, testkit/media.make_phone_video),
   the same way;
3. what `make bench-uploads` does: the 720p file each way in (raw GridFS,
   gRPC, REST, the form), DAY_BURST_ROUNDS rounds, each deleted as soon as it
   is answered, then one DAY_BURST_BIG_MB random upload through REST;
4. DAY_TOGETHER phone videos uploaded at once, then converted.

Before the first step (on the fresh store, after one small job) and after
the last (every job DONE, then two checkpoints and a compaction later,
MONGO_COMPACT_S + 20 s) it measures, side by side:
the data folder's size, the store's RSS and GetJob's p99 over DAY_PROBES
calls on an idle mesh. The store's peak RSS is sampled all day. The figure
printed last is the data folder and RSS after the day, against the goals
(docs/operations.md "Big files": under 3 GB and under 1 GB). Exit status 1
if a goal was missed, a job did not end DONE, a video was kept or a process
died.

Options (environment):
  DAY_720P 4             720p uploads in step 1
  DAY_PHONE 2            phone uploads in step 2
  DAY_BURST_ROUNDS 3     rounds of the four ways in step 3 (0: skip)
  DAY_BURST_BIG_MB 2000  the random upload of step 3 (0: skip)
  DAY_TOGETHER 3         phone uploads at once in step 4
  DAY_MINUTES 10         length of both videos (10: ~360 MB 720p, ~1.5 GB phone)
  DAY_PHONE_MBIT 20      the phone video's bitrate
  DAY_PROBES 300         GetJob calls timed before and after
  DAY_DIR /tmp/video2mp3-day   media (kept, reused) and the run's data (deleted)
  DAY_KEEP_DATA 0        1: keep the store's data folder afterwards
With the defaults about 15 GB is written; e.g. DAY_MINUTES=2 DAY_BURST_BIG_MB=300
makes a run of ~3 GB.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import requests

from bench import uploads
from bench.big import percentile, videos_kept
from localmesh.settings import MeshSettings
from testkit.bigmesh import MakeRun, RssSampler, disk_usage
from testkit.clients import RestClient
from testkit.media import make_media, make_phone_video
from video2mp3.core.settings import load, setting

MB = 2**20
GB = 2**30
GOAL_DISK_GB = 3.0
GOAL_RSS_GB = 1.0
FINAL = ("JOB_STATE_DONE", "JOB_STATE_FAILED")


@dataclasses.dataclass(frozen=True)
class DaySettings:
    """`make bench-day`'s knobs (the docstring's Options)."""
    n720p: int = setting("DAY_720P", 4, minimum=0, help="720p uploads, one after another")
    phone: int = setting("DAY_PHONE", 2, minimum=0, help="phone-sized uploads, one after another")
    burst_rounds: int = setting("DAY_BURST_ROUNDS", 3, minimum=0, help="rounds of bench-uploads' four ways")
    burst_big_mb: int = setting("DAY_BURST_BIG_MB", 2000, minimum=0, help="the random REST upload, MB")
    together: int = setting("DAY_TOGETHER", 3, minimum=0, help="phone uploads at once")
    minutes: float = setting("DAY_MINUTES", 10.0, minimum=0.1, help="length of the videos")
    phone_mbit: float = setting("DAY_PHONE_MBIT", 20.0, minimum=1, help="the phone video's bitrate")
    probes: int = setting("DAY_PROBES", 300, minimum=10, help="GetJob calls timed before and after")
    dir: Path = setting("DAY_DIR", Path("/tmp/video2mp3-day"), help="media (kept) and the run's data")
    keep_data: bool = setting("DAY_KEEP_DATA", False, help="keep the store's data folder afterwards")


@dataclasses.dataclass
class Snapshot:
    """The store at one moment, on an idle mesh."""
    disk: int
    rss: int
    getjob_p50: float
    getjob_p99: float


class Day:
    """One user's day on a running `make run`: uploads, waits, what the store holds."""

    def __init__(self, run: MakeRun):
        self.run = run
        self.rest = RestClient(run.rest_base_url)
        self.rest.sign_up_and_login()
        self.written = 0  # bytes uploaded so far
        self.jobs: list[str] = []
        self.failures: list[str] = []

    def store_rss(self) -> int:
        pids = self.run.pids()["mongo"]
        return psutil.Process(pids[0]).memory_info().rss if pids else 0

    def snapshot(self, job_id: str, probes: int) -> Snapshot:
        times = []
        for _ in range(probes):
            t = time.perf_counter()
            r = self.rest.get(f"/v1/jobs/{job_id}")
            times.append(time.perf_counter() - t)
            if r.status_code != 200:
                self.failures.append(f"GetJob: HTTP {r.status_code}")
        return Snapshot(disk_usage(self.run.data_dir), self.store_rss(),
                        percentile(times, 50), percentile(times, 99))

    def upload(self, path: Path, name: str) -> str:
        """One REST upload (its own session, so threads may call it); the job id or ""."""
        client = RestClient(self.run.rest_base_url)
        client.token = self.rest.token
        try:
            r = client.upload(path, params={"filename": name}, timeout=1800)
        except requests.RequestException as e:
            self.failures.append(f"upload {name}: {e}")
            return ""
        if r.status_code != 200:
            self.failures.append(f"upload {name}: HTTP {r.status_code} {r.text[:200]}")
            return ""
        self.written += path.stat().st_size
        job_id = r.json()["job_id"]
        self.jobs.append(job_id)
        return job_id

    def wait_done(self, job_ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        left = [j for j in job_ids if j]
        while left and time.monotonic() < deadline:
            states = {j: self.rest.get(f"/v1/jobs/{j}").json().get("state") for j in left}
            for j, state in states.items():
                if state == "JOB_STATE_FAILED":
                    self.failures.append(f"job {j} FAILED")
            left = [j for j, state in states.items() if state not in FINAL]
            time.sleep(1)
        if left:
            self.failures.append(f"{len(left)} jobs not DONE after {timeout:.0f} s")

    def together(self, path: Path, count: int, label: str) -> list[str]:
        ids: list[str] = [""] * count

        def one(k: int) -> None:
            ids[k] = self.upload(path, f"{label}-{k + 1}.mp4")

        threads = [threading.Thread(target=one, args=(k,)) for k in range(count)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return ids


def make_720p(folder: Path, minutes: float) -> Path:
    """bench/convert.py's 720p video (H.264 + AAC, index at the end) of `minutes`, made once."""
    path = folder / f"day-720p-{minutes:g}min.mp4"
    if not path.exists():
        tmp = path.with_suffix(".part.mp4")
        make_media(tmp, duration=minutes * 60, video_codec="h264", video_size=(1280, 720), fps=10,
                   video_noise=12, audio_codec="aac", sample_rate=48000, layout="stereo")
        tmp.rename(path)
    return path


def _steps(day: Day, opts: DaySettings, v720: Path, phone: Path, big: Path | None) -> list[tuple[str, Callable]]:
    per_job = 300 + 120 * opts.minutes  # seconds a conversion may take on a busy 2-core machine

    def one_by_one(path: Path, count: int, label: str) -> Callable[[], None]:
        def step() -> None:
            for i in range(count):
                day.wait_done([day.upload(path, f"{label}-{i + 1}.mp4")], per_job)
        return step

    def burst() -> None:
        if opts.burst_rounds:
            before = day.written
            result = uploads.measure_uploads(day.run, v720, opts.burst_rounds, say=lambda m: None)
            day.written = before + sum(len(t) for t in result["times"].values()) * v720.stat().st_size
        if big is not None:
            uploads.measure_upload_rss(day.run, big)
            day.written += big.stat().st_size

    def at_once() -> None:
        day.wait_done(day.together(phone, opts.together, "together"), per_job * opts.together)

    return [(f"{opts.n720p} x 720p one by one", one_by_one(v720, opts.n720p, "720p")),
            (f"{opts.phone} x phone one by one", one_by_one(phone, opts.phone, "phone")),
            (f"upload benchmark ({opts.burst_rounds} rounds, {opts.burst_big_mb} MB)", burst),
            (f"{opts.together} phone videos at once", at_once)]


def main() -> int:
    opts = load(DaySettings)
    media = opts.dir / "media"
    media.mkdir(parents=True, exist_ok=True)
    if opts.burst_rounds and shutil.which("curl") is None:
        raise SystemExit("curl is not installed: apt-get update && apt-get install -y curl")
    t = time.monotonic()
    v720 = make_720p(media, opts.minutes)
    phone = make_phone_video(media / f"day-phone-{opts.minutes:g}min-{opts.phone_mbit:g}mbit.mp4",
                             minutes=opts.minutes, mbit=opts.phone_mbit)
    big = uploads.random_file(media / f"random{opts.burst_big_mb}mb.bin", opts.burst_big_mb * 10**6) \
        if opts.burst_big_mb else None
    planned = (opts.n720p + 4 * opts.burst_rounds) * v720.stat().st_size \
        + (opts.phone + opts.together) * phone.stat().st_size + (big.stat().st_size if big else 0)
    print(f"media: {v720.name} ({v720.stat().st_size / MB:.0f} MB), {phone.name} "
          f"({phone.stat().st_size / MB:.0f} MB); {time.monotonic() - t:.0f} s to make or find; "
          f"the day writes {planned / GB:.1f} GB; {shutil.disk_usage(opts.dir).free / GB:.0f} GB free", flush=True)

    data = opts.dir / f"run-{os.getpid()}"
    shutil.rmtree(data, ignore_errors=True)
    run = MakeRun(data / "mongo", log=data / "make-run.log")
    run.start()
    sampler = RssSampler(run).start()
    ok = True
    try:
        day = Day(run)
        clip = media / "day-clip.mp4"
        if not clip.exists():
            make_media(clip, container="mp4", video_codec="h264", audio_codec="aac", duration=5.0)
        probe_job = day.upload(clip, "clip.mp4")
        day.wait_done([probe_job], 120)
        fresh = day.snapshot(probe_job, opts.probes)
        _say_snapshot("fresh store", fresh, day.written)
        started = time.monotonic()
        for label, step in _steps(day, opts, v720, phone, big):
            t = time.monotonic()
            step()
            print(f"{label}: {time.monotonic() - t:.0f} s; written so far {day.written / GB:.1f} GB; "
                  f"data folder {disk_usage(run.data_dir) / GB:.2f} GB; store RSS {day.store_rss() / MB:.0f} MB",
                  flush=True)
        print(f"the day took {time.monotonic() - started:.0f} s", flush=True)
        day.wait_done(day.jobs, 600)
        kept = videos_kept(run)
        # Journal files go at a checkpoint (every 10 s), the space of the last
        # videos at the store's next compaction: wait for both.
        time.sleep(load(MeshSettings, run.env).mongo_compact_s + 20)
        after = day.snapshot(probe_job, opts.probes)
    finally:
        peaks = sampler.stop()
        log = run.log()
        code = run.stop()
        if not opts.keep_data:
            shutil.rmtree(data, ignore_errors=True)
    _say_snapshot("after the day", after, day.written)
    print(f"videos kept: {kept}; MP3s kept: {len(day.jobs)}; problems: {day.failures or 'none'}")
    deaths = [line for line in log.splitlines() if "restarting in" in line]
    for line in deaths:
        print(line)
    ok = not day.failures and kept == 0 and not deaths and code == 0
    disk_ok, rss_ok = after.disk < GOAL_DISK_GB * GB, after.rss < GOAL_RSS_GB * GB
    print(f"GetJob p99: fresh {fresh.getjob_p99:.3f} s, after the day {after.getjob_p99:.3f} s "
          f"({after.getjob_p99 / fresh.getjob_p99:.2f}x)")
    print(f"store RSS: fresh {fresh.rss / MB:.0f} MB, peak {peaks['mongo'] / MB:.0f} MB")
    print(f"after {day.written / GB:.1f} GB written: data folder {after.disk / GB:.2f} GB "
          f"(goal < {GOAL_DISK_GB:g} GB) {'ok' if disk_ok else 'MISSED'}, store RSS {after.rss / GB:.2f} GB "
          f"(goal < {GOAL_RSS_GB:g} GB) {'ok' if rss_ok else 'MISSED'}{'' if ok else '; RUN FAILED'}")
    return 0 if ok and disk_ok and rss_ok else 1


def _say_snapshot(label: str, s: Snapshot, written: int) -> None:
    print(f"{label} ({written / GB:.1f} GB written): data folder {s.disk / GB:.2f} GB, store RSS "
          f"{s.rss / MB:.0f} MB, GetJob p50 {s.getjob_p50 * 1000:.0f} ms p99 {s.getjob_p99 * 1000:.0f} ms",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
