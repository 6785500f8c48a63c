"""`make bench-big`: phone-sized videos through `make run`, measured.

Generates a phone-like video (10-minute 1080p H.264 ~20 Mbit/s + AAC, ~1.5 GB;
testkit/media.make_phone_video, PyAV only), starts `python -m localmesh` (make run, with its embedded defaults)
on free ports with a fresh data folder, then uploads it BIG_FILES times in a
row through REST, each upload starting when the previous one ends; the last
two of them at once, and the last one meanwhile, so that two conversions and
one upload run together (conversions are faster than uploads here). Meanwhile it samples every process's
RSS and times GetJob/ListJobs (REST) in a loop. At the end: peak RSS per
process against its ceiling, the store's disk use once everything is DONE
(and the videos deleted), and the API latency percentiles while two
conversions and one upload were running. Exit status 1 if a ceiling was
exceeded, a job did not finish DONE, or a process died.

Options (environment):
  BIG_FILES 5            how many uploads
  BIG_MINUTES 10         video length
  BIG_MBIT 20            video bitrate
  BIG_DIR /tmp/video2mp3-big   media (kept, reused) and the run's data (deleted)
  BIG_KEEP_DATA 0        1: keep the store's data folder afterwards
  BIG_ABORT_RSS_MB 12000 stop early if one process grows past this (protects the box)
  BIG_CEILING_SCALE 1.0  multiplies every ceiling (the test's smaller files use less)
  BIG_LATENCY_P99_S 0.5  the GetJob/ListJobs p99 target under load
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from testkit.bigmesh import MakeRun, RssSampler, disk_usage
from testkit.clients import RestClient
from testkit.media import make_phone_video
from video2mp3.core.settings import load, setting

MB = 2**20
# Per process (the largest single process of each name; converter: the
# supervisor or one worker). docs/operations.md "Big files" explains them.
CEILINGS_MB = {"mongo": 1024, "auth": 200, "gateway": 300, "converter": 400, "envoy": 200}


@dataclasses.dataclass(frozen=True)
class BigSettings:
    """`make bench-big`'s knobs (the docstring's Options)."""
    files: int = setting("BIG_FILES", 5, minimum=1)
    minutes: float = setting("BIG_MINUTES", 10.0)
    mbit: float = setting("BIG_MBIT", 20.0)
    dir: Path = setting("BIG_DIR", Path("/tmp/video2mp3-big"))
    keep_data: bool = setting("BIG_KEEP_DATA", False)
    abort_rss_mb: int = setting("BIG_ABORT_RSS_MB", 12000)
    ceiling_scale: float = setting("BIG_CEILING_SCALE", 1.0)
    latency_p99_s: float = setting("BIG_LATENCY_P99_S", 0.5)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


class Prober:
    """GetJob and ListJobs in a loop; each sample is tagged 'busy' when at least
    two jobs were PROCESSING (by the last ListJobs) and an upload was running."""

    def __init__(self, base_url: str, token: str, uploading: threading.Event):
        self.rest = RestClient(base_url)
        self.rest.token = token
        self.uploading = uploading
        self.job_id = ""
        self.samples: dict[str, list[tuple[float, bool]]] = {"GetJob": [], "ListJobs": []}
        self.processing = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prober", daemon=True)

    def start(self) -> Prober:
        self._thread.start()
        return self

    def _time(self, name: str, path: str):
        t = time.perf_counter()
        r = self.rest.get(path)
        dt = time.perf_counter() - t
        if r.status_code != 200:
            self.errors += 1
            return None
        busy = self.processing >= 2 and self.uploading.is_set()
        self.samples[name].append((dt, busy))
        return r.json()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            try:
                listed = self._time("ListJobs", "/v1/jobs?page_size=20")
                if listed is not None:
                    jobs = listed.get("jobs", [])
                    self.processing = sum(j["state"] == "JOB_STATE_PROCESSING" for j in jobs)
                if self.job_id:
                    self._time("GetJob", f"/v1/jobs/{self.job_id}")
            except Exception:  # noqa: BLE001 - counted, the loop goes on
                self.errors += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _upload(run: MakeRun, token: str, video: Path, i: int,
            results: list[requests.Response | None], k: int) -> None:
    """Upload `video` as phone-<i+1>.mp4 into results[k] (one thread each)."""
    client = RestClient(run.rest_base_url)  # a Session per thread
    client.token = token
    results[k] = client.upload(video, params={"filename": f"phone-{i + 1}.mp4"})


def videos_kept(run: MakeRun) -> int:
    """Video files still in the embedded store (make run's database)."""
    import pymongo

    uri = f"mongodb://127.0.0.1:{run.env['MONGO_PORT']}/?directConnection=true"
    client: pymongo.MongoClient[dict[str, Any]]
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000) as client:
        return client["video2mp3"]["videos.files"].count_documents({})


def main() -> int:
    opts = load(BigSettings)
    files, minutes, mbit, base = opts.files, opts.minutes, opts.mbit, opts.dir
    abort_rss = opts.abort_rss_mb * MB
    ceilings = {k: int(v * opts.ceiling_scale) for k, v in CEILINGS_MB.items()}
    base.mkdir(parents=True, exist_ok=True)

    t = time.monotonic()
    video = make_phone_video(base / f"phone-{minutes:g}min-{mbit:g}mbit.mp4", minutes=minutes, mbit=mbit)
    size = video.stat().st_size
    print(f"video: {video} ({size / MB:.0f} MB; {time.monotonic() - t:.0f}s to generate or find)", flush=True)

    data = base / f"run-{os.getpid()}"
    shutil.rmtree(data, ignore_errors=True)
    run = MakeRun(data / "mongo", log=data / "make-run.log")
    run.start()
    print(f"make run up: REST {run.rest_base_url}, log {run.log_path}", flush=True)
    sampler = RssSampler(run).start()
    rest = RestClient(run.rest_base_url)
    rest.sign_up_and_login()
    prober = Prober(run.rest_base_url, rest.token, threading.Event()).start()
    try:
        job_ids, ok, aborted = _upload_all(run, rest.token, prober, sampler, video, files, abort_rss)
        states: dict[str, str] = {}
        if not aborted:
            deadline = time.monotonic() + 600 + 300 * files * minutes / 10
            states, aborted = _wait_finished(rest, job_ids, sampler, abort_rss, deadline)
        print(f"jobs: {sorted(states.values())}", flush=True)
        ok &= len(job_ids) == files and all(s == "JOB_STATE_DONE" for s in states.values())
        kept = videos_kept(run)
        print(f"videos kept after DONE: {kept}", flush=True)
        ok &= kept == 0  # retention: a video goes once its MP3 is DONE
        # Journal files go at the next checkpoint (10 s); give it two.
        time.sleep(25)
    finally:
        prober.stop()
        peaks = sampler.stop()
        disk = disk_usage(data / "mongo")
        log = run.log()
        code = run.stop()
    if aborted:
        print(f"ABORTED: {aborted}")
        ok = False

    print()
    print(f"== {files} x {size / MB:.0f} MB ({minutes:g} min, {mbit:g} Mbit/s) through make run ==")
    ok &= _report_rss(peaks, ceilings)
    print(f"store disk after all DONE: {disk / MB:.0f} MB (uploaded {files * size / MB:.0f} MB)")
    _report_latency(prober, opts.latency_p99_s)
    deaths = [line for line in log.splitlines() if "restarting in" in line]
    for line in deaths:
        print(line)
    ok &= not deaths and code == 0
    print(f"make run exit code: {code}")
    if not opts.keep_data:
        shutil.rmtree(data / "mongo", ignore_errors=True)
    print("RESULT:", "ok" if ok else "FAILED")
    return 0 if ok else 1


def _upload_plan(files: int) -> list[list[int]]:
    """The uploads, in groups that run at once. The last three make the load the
    latency is measured under: two uploads at once, whose conversions then run
    while the third uploads."""
    if files < 3:
        return [[i] for i in range(files)]
    return [[i] for i in range(files - 3)] + [[files - 3, files - 2], [files - 1]]


def _upload_group(run: MakeRun, token: str, video: Path, group: list[int]) -> list[requests.Response | None]:
    """The uploads of one group at once, a thread each; None where one raised."""
    results: list[requests.Response | None] = [None] * len(group)
    threads = [threading.Thread(target=_upload, args=(run, token, video, i, results, k)) for k, i in enumerate(group)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results


def _upload_all(
    run: MakeRun, token: str, prober: Prober, sampler: RssSampler, video: Path, files: int, abort_rss: int
) -> tuple[list[str], bool, str]:
    """Every upload of the plan: (the jobs created, whether every upload was
    accepted, why it stopped early or "")."""
    size = video.stat().st_size
    job_ids: list[str] = []
    ok = True
    for group in _upload_plan(files):
        t = time.monotonic()
        prober.uploading.set()
        results = _upload_group(run, token, video, group)
        prober.uploading.clear()
        dt = time.monotonic() - t
        for i, r in zip(group, results, strict=True):
            if r is None or r.status_code != 200:
                what = f"HTTP {r.status_code} {r.text[:200]}" if r is not None else "failed"
                print(f"upload {i + 1}: {what}", flush=True)
                ok = False
                continue
            job_ids.append(r.json()["job_id"])
            prober.job_id = job_ids[-1]
        print(
            f"upload {'+'.join(str(i + 1) for i in group)}/{files}: {dt:.0f}s "
            f"({len(group) * size / MB / dt:.0f} MB/s); peak RSS so far: "
            + ", ".join(f"{k} {v // MB}" for k, v in sampler.peak.items()),
            flush=True,
        )
        if max(sampler.peak.values()) > abort_rss:
            return job_ids, ok, "a process passed BIG_ABORT_RSS_MB"
    return job_ids, ok, ""


def _wait_finished(
    rest: RestClient, job_ids: list[str], sampler: RssSampler, abort_rss: int, deadline: float
) -> tuple[dict[str, str], str]:
    """Poll until every job is DONE or FAILED, the deadline passes or a process
    grows past abort_rss: (each job's last state, why it was aborted or "")."""
    states: dict[str, str] = {}
    aborted = ""
    while not aborted and time.monotonic() < deadline:
        states = {j: rest.get(f"/v1/jobs/{j}").json().get("state") for j in job_ids}
        if all(s in ("JOB_STATE_DONE", "JOB_STATE_FAILED") for s in states.values()):
            break
        if max(sampler.peak.values()) > abort_rss:
            aborted = "a process passed BIG_ABORT_RSS_MB"
        time.sleep(2)
    return states, aborted


def _report_rss(peaks: dict[str, int], ceilings: dict[str, int]) -> bool:
    """Each process's peak RSS against its ceiling (MB); True if each was measured and none is over."""
    ok = True
    print(f"{'process':<10} {'peak RSS':>9} {'ceiling':>8}")
    for name, peak in peaks.items():
        # A process never found was never measured: that is a failure, not a pass.
        verdict = "NOT MEASURED" if peak == 0 else "OVER" if peak > ceilings[name] * MB else "ok"
        ok &= verdict == "ok"
        print(f"{name:<10} {peak / MB:>6.0f} MB {ceilings[name]:>5} MB {verdict}")
    return ok


def _report_latency(prober: Prober, p99_target: float) -> None:
    for name, samples in prober.samples.items():
        for label, vals in (("under load", [d for d, b in samples if b]), ("overall", [d for d, _ in samples])):
            print(f"{name:<9} {label:<10} n={len(vals):<5} p50={percentile(vals, 50):.3f}s "
                  f"p95={percentile(vals, 95):.3f}s p99={percentile(vals, 99):.3f}s "
                  f"max={max(vals, default=float('nan')):.3f}s")
    loaded = [d for s in prober.samples.values() for d, b in s if b]
    p99 = percentile(loaded, 99)
    print(f"GetJob+ListJobs p99 with 2 conversions + 1 upload running: {p99:.3f}s "
          f"(target {p99_target}s; {len(loaded)} samples) {'ok' if loaded and p99 < p99_target else 'MISSED'}")
    print(f"API errors: {prober.errors}")


if __name__ == "__main__":
    sys.exit(main())
