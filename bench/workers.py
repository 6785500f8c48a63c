"""make bench-workers: does the converter scale with worker processes?

    python -m bench.workers [--jobs 8] [--runs 2] [--minutes 5]

Starts a SecantusDB and the converter alone (mesh/testbed.py, mesh/stack.py),
submits N equal jobs straight to MongoDB + RabbitMQ (mesh/direct.py, as the
gateway would) and times until all are DONE, with CONVERTER_WORKERS=1 and =2,
alternating run by run; prints the medians and the ratio 2 workers / 1 worker.
Goal (issue #3): <= 0.6 on this 2-core machine. Each job is M minutes of
48 kHz stereo AAC (audio-only m4a, generated once and cached).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import jobs
from mesh.direct import DirectSubmitter
from mesh.stack import Stack
from mesh.testbed import Testbed

CACHE = Path(tempfile.gettempdir()) / "video2mp3-bench"


def source(minutes: int) -> Path:
    from tests.media import make_media

    path = CACHE / f"workers-{minutes}min.m4a"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"generating {path} ...", flush=True)
        make_media(path.with_suffix(".tmp.m4a"), video_codec=None, audio_codec="aac",
                   duration=minutes * 60, sample_rate=48000, layout="stereo")
        path.with_suffix(".tmp.m4a").rename(path)
    return path


def time_jobs(bed: Testbed, log_dir: Path, workers: int, video: Path, n: int) -> float:
    env = bed.service_env(CONVERTER_WORKERS=str(workers))
    stack = Stack(env, log_dir=log_dir / f"w{workers}-{time.monotonic_ns()}")
    stack.start(["converter"])
    submitter = DirectSubmitter(env)
    try:
        ids: list[str] = []
        start = time.monotonic()
        ids += [submitter.submit(video) for _ in range(n)]
        pending = set(ids)
        while pending:
            time.sleep(0.1)
            for job_id in list(pending):
                doc = submitter.jobs.get(job_id)
                if doc["state"] in jobs.FINAL_STATES:
                    if doc["state"] != jobs.DONE:
                        raise SystemExit(f"job {job_id} FAILED: {doc['error']}")
                    pending.discard(job_id)
        return time.monotonic() - start
    finally:
        # The test MongoDB keeps everything in memory: drop this run's files.
        for doc in submitter.mongo.jobs.find({"_id": {"$in": ids}}):
            submitter.mongo.videos.delete(doc["video_fid"])
            if doc.get("mp3_fid"):
                submitter.mongo.mp3s.delete(doc["mp3_fid"])
        submitter.close()
        stack.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--minutes", type=int, default=5)
    args = ap.parse_args()
    video = source(args.minutes)
    log_dir = Path(tempfile.mkdtemp(prefix="video2mp3-bench-workers-"))
    times: dict[int, list[float]] = {1: [], 2: []}
    with Testbed(log_dir) as bed:
        for run in range(args.runs):
            for workers in (1, 2):
                t = time_jobs(bed, log_dir, workers, video, args.jobs)
                times[workers].append(t)
                print(f"run {run + 1}: {workers} worker(s): {args.jobs} jobs in {t:.2f}s", flush=True)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"bench-workers: {args.jobs} jobs of {args.minutes} min audio: 1 worker {one:.2f}s, "
          f"2 workers {two:.2f}s, ratio 2/1 = {two / one:.2f} (goal <= 0.6)")


if __name__ == "__main__":
    main()
