"""make bench-workers: does the converter scale with worker processes?

    python -m bench.workers [--jobs 8] [--runs 2] [--minutes 5]

Starts a SecantusDB and the converter alone (testkit/testbed.py, localmesh/stack.py),
submits N equal jobs straight to MongoDB + RabbitMQ (testkit/direct.py, as the
gateway would) and times until all are DONE, with CONVERTER_WORKERS=1 and =2,
alternating run by run; prints the medians and the ratio 2 workers / 1 worker.
Goal (issue 14): <= 0.55 with the default settings, on this 2-core machine. Each job is M minutes of
48 kHz stereo AAC (audio-only m4a, generated once and cached).

The test MongoDB (SecantusDB, a Python server) runs on the same two cores and
serves both workers' GridFS reads and writes, so the same N conversions are
also timed without storage (transcode() from the file to a null sink, in 1
and 2 processes): that line is the converter's own scaling.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

from localmesh.stack import Stack
from testkit.direct import DirectSubmitter
from testkit.testbed import Testbed
from video2mp3.domain import jobs
from video2mp3.storage.gridfs_download import delete_file
from video2mp3.storage.mongo import MP3S_BUCKET, VIDEOS_BUCKET

CACHE = Path(tempfile.gettempdir()) / "video2mp3-bench"


def source(minutes: int) -> Path:
    from testkit.media import make_media

    path = CACHE / f"workers-{minutes}min.m4a"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"generating {path} ...", flush=True)
        make_media(path.with_suffix(".tmp.m4a"), video_codec=None, audio_codec="aac",
                   duration=minutes * 60, sample_rate=48000, layout="stereo")
        path.with_suffix(".tmp.m4a").rename(path)
    return path


def time_jobs(bed: Testbed, log_dir: Path, workers: int, video: Path, n: int, overlap: str) -> float:
    # Every job reads one stored copy: keep it past each job's end.
    env = bed.service_env(CONVERTER_WORKERS=str(workers), CONVERTER_OVERLAP=overlap,
                          VIDEO_RETENTION="86400")
    stack = Stack(env, log_dir=log_dir / f"w{workers}-{time.monotonic_ns()}")
    stack.start(["converter"])
    submitter = DirectSubmitter(env)
    try:
        # One stored copy read by every job: the timing is the conversions, not
        # N uploads into the (single-threaded, same-machine) test MongoDB.
        fid = submitter.store(video)
        ids: list[str] = []
        start = time.monotonic()
        ids += [submitter.submit(video, video_fid=fid) for _ in range(n)]
        pending = set(ids)
        while pending:
            time.sleep(0.1)
            for job_id in list(pending):
                job = submitter.jobs.get(job_id)
                if job is None:
                    raise SystemExit(f"job {job_id} is gone")
                if job.state in jobs.FINAL_STATES:
                    if job.state != jobs.DONE:
                        raise SystemExit(f"job {job_id} FAILED: {job.error}")
                    pending.discard(job_id)
        return time.monotonic() - start
    finally:
        # The test MongoDB keeps everything in memory: drop this run's files.
        delete_file(submitter.mongo.db, VIDEOS_BUCKET, fid)  # in ranges (storage/gridfs_download.py)
        for doc in submitter.mongo.jobs.find({"_id": {"$in": ids}, "mp3_fid": {"$ne": None}}):
            delete_file(submitter.mongo.db, MP3S_BUCKET, doc["mp3_fid"])
        submitter.close()
        stack.close()


class _Null:
    def write(self, data: bytes) -> None:
        pass


def _convert_file(path: str) -> None:
    from video2mp3.converter.transcode import transcode
    from video2mp3.media.v1 import media_pb2

    with open(path, "rb") as f:
        transcode(f, _Null(), media_pb2.ConversionOptions(bitrate_kbps=192, channels=2), overlap=False)


def time_without_storage(video: Path, n: int, processes: int) -> float:
    with mp.get_context("spawn").Pool(processes) as pool:
        pool.map(_convert_file, [str(video)] * processes)  # warm up imports
        start = time.monotonic()
        pool.map(_convert_file, [str(video)] * n, chunksize=1)
        return time.monotonic() - start


def compare_workers(jobs: int = 8, runs: int = 2, minutes: int = 5) -> list[tuple[str, str, str]]:
    """Times N jobs on 1 and 2 workers, alternating; prints each run and
    returns summary rows (figure, measured, goal) for bench/e2e.py."""
    video = source(minutes)
    log_dir = Path(tempfile.mkdtemp(prefix="video2mp3-bench-workers-"))
    # "auto" is the shipped default (converter/policy.overlap: helper threads
    # only for a job alone with nothing queued); "on" and "off" pin it.
    configs = [(w, o) for o in ("auto", "on", "off") for w in (1, 2)]
    times: dict[tuple, list[float]] = {c: [] for c in configs}
    with Testbed(log_dir) as bed:
        for run in range(runs):
            for workers, overlap in configs:
                t = time_jobs(bed, log_dir, workers, video, jobs, overlap)
                times[(workers, overlap)].append(t)
                print(f"run {run + 1}: {workers} worker(s), overlap {overlap}: "
                      f"{jobs} jobs in {t:.2f}s", flush=True)
    alone = {p: statistics.median(time_without_storage(video, jobs, p) for _ in range(runs))
             for p in (1, 2)}
    rows = []
    for overlap in ("auto", "on", "off"):
        one, two = (statistics.median(times[(w, overlap)]) for w in (1, 2))
        label = "default settings" if overlap == "auto" else f"CONVERTER_OVERLAP={overlap}"
        ratio = two / one
        goal = f"<= 0.55: {'goal met' if ratio <= 0.55 else 'GOAL MISSED'}" if overlap == "auto" else ""
        rows.append((f"workers 2/1, {label}", f"{two:.2f} s / {one:.2f} s = {ratio:.2f}", goal))
    rows.append(("workers 2/1, converter alone (no storage)",
                 f"{alone[2]:.2f} s / {alone[1]:.2f} s = {alone[2] / alone[1]:.2f}", ""))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--minutes", type=int, default=5)
    args = ap.parse_args()
    rows = compare_workers(args.jobs, args.runs, args.minutes)
    print(f"\nbench-workers: {args.jobs} jobs of {args.minutes} min audio, 2 workers / 1 worker")
    for figure, measured, goal in rows:
        print(f"    {figure:<45} {measured:<28} {goal}")


if __name__ == "__main__":
    main()
