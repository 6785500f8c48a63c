"""`make bench-uploads`: how fast a video reaches GridFS, each way in.

Starts `make run` (python -m localmesh, its embedded defaults, a fresh data
folder) on free ports, then uploads the same file side by side, in an order
that rotates each round, and reports each way's median time and its ratio to
a raw `GridFSBucket.upload_from_stream` of that file to the mesh's own store:

  raw     GridFSBucket.upload_from_stream (bucket `bench_raw`, deleted after)
  grpc    UploadVideo straight to the gateway's port, 1 MiB messages
  rest    POST /v1/videos through Envoy, the raw body (curl --data-binary @file)
  form    the seed's multipart POST /upload through Envoy (curl -F file=@file)

Each job is deleted as soon as its upload is answered, then the run waits a
moment: the converter would otherwise convert every upload and compete for
the 2 cores, and a delete stops a conversion at its next progress write
(docs/architecture.md, "The job lifecycle"); make run's defaults stay as they
are. The times are the uploads alone (client start to answer), not the delete.

Then one ~2 GB upload of random bytes (a non-media file is fine: the upload
path does not look inside; its job would just fail later) through REST, while
the gateway's RSS is sampled: its peak against the 150 MB goal.

Exit status 1 if a goal was missed.

Options (environment):
  UPLOADS_FILE  /tmp/video2mp3-bench/long10min_v1.mp4   the file timed (waited for, never made)
  UPLOADS_ROUNDS 3        rounds of the four ways
  UPLOADS_BIG_MB 2000     the RSS upload's size (0: skip), made once next to UPLOADS_FILE
  UPLOADS_DIR  /tmp/video2mp3-bench-uploads   the run's data (deleted after)

    from bench.uploads import measure_uploads     # e.g. from another bench
    result = measure_uploads(run, path)           # run: a started testkit.bigmesh.MakeRun
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pymongo
from google.api import httpbody_pb2
from gridfs import GridFSBucket

from testkit.bigmesh import MakeRun
from testkit.clients import RestClient
from video2mp3.core.settings import load, setting
from video2mp3.media.v1 import media_pb2, media_pb2_grpc

MB = 2**20
GRPC_MESSAGE = MB
# Each way's goal as a fraction of the raw GridFS speed (issue 14).
GOALS = {"raw": 1.0, "grpc": 0.85, "rest": 0.7, "form": 0.7}
LABELS = {"raw": "raw GridFSBucket", "grpc": "gRPC direct", "rest": "REST /v1/videos",
          "form": "REST /upload (form)"}
RSS_GOAL_MB = 150
RAW_BUCKET = "bench_raw"
SETTLE_S = 1.0  # after a delete, so a conversion it stopped has let go of the CPU


@dataclasses.dataclass(frozen=True)
class UploadsSettings:
    """`make bench-uploads`'s knobs (the docstring's Options)."""
    file: Path = setting("UPLOADS_FILE", Path("/tmp/video2mp3-bench/long10min_v1.mp4"))
    rounds: int = setting("UPLOADS_ROUNDS", 3, minimum=1)
    big_mb: int = setting("UPLOADS_BIG_MB", 2000, minimum=0)
    dir: Path = setting("UPLOADS_DIR", Path("/tmp/video2mp3-bench-uploads"))


class Ways:
    """The four ways in, each `way(path) -> seconds`, each cleaning up after itself."""

    def __init__(self, run: MakeRun):
        self.run = run
        self.rest = RestClient(run.rest_base_url)
        self.rest.sign_up_and_login()
        self.channel = grpc.insecure_channel(run.media_addr, options=[
            ("grpc.max_send_message_length", 4 * MB)])
        self.media = media_pb2_grpc.MediaServiceStub(self.channel)
        self.mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri(run))
        self.raw_bucket = GridFSBucket(self.mongo.get_database("video2mp3"), bucket_name=RAW_BUCKET)

    def close(self) -> None:
        self.channel.close()
        self.mongo.close()

    def all(self) -> dict[str, Callable[[Path], float]]:
        return {"raw": self.raw, "grpc": self.grpc, "rest": self.rest_raw, "form": self.form}

    def raw(self, path: Path) -> float:
        with open(path, "rb") as f:
            t = time.perf_counter()
            fid = self.raw_bucket.upload_from_stream(path.name, f)
            took = time.perf_counter() - t
        self.raw_bucket.delete(fid)
        return took

    def grpc(self, path: Path) -> float:
        md = [("authorization", f"Bearer {self.rest.token}")]
        t = time.perf_counter()
        job = self.media.UploadVideo(_messages(path), metadata=md, timeout=600)
        took = time.perf_counter() - t
        self._delete(job.job_id)
        return took

    def rest_raw(self, path: Path) -> float:
        return self._curl(f"/v1/videos?filename={path.name}",
                          ["-H", "Content-Type: video/mp4", "--data-binary", f"@{path}"])

    def form(self, path: Path) -> float:
        return self._curl("/upload", ["-F", f"file=@{path};type=video/mp4"])

    def rest_streamed(self, path: Path) -> float:
        """POST /v1/videos with curl reading the file as it sends (-T), for files
        too big to hold in the client."""
        return self._curl(f"/v1/videos?filename={path.name}",
                          ["-X", "POST", "-H", "Content-Type: application/octet-stream", "-T", str(path)])

    def _curl(self, route: str, args: list[str]) -> float:
        cmd = ["curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {self.rest.token}",
               *args, f"{self.run.rest_base_url}{route}"]
        t = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        took = time.perf_counter() - t
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} ... {route}: {out.stderr} {out.stdout[:500]}")
        self._delete(json.loads(out.stdout)["job_id"])
        return took

    def _delete(self, job_id: str) -> None:
        r = self.rest.s.delete(f"{self.run.rest_base_url}/v1/jobs/{job_id}",
                               headers=self.rest.headers(), timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"DELETE /v1/jobs/{job_id}: {r.status_code} {r.text}")
        time.sleep(SETTLE_S)


def mongo_uri(run: MakeRun) -> str:
    """make run's embedded store (localmesh/__main__.py builds the same URI)."""
    return f"mongodb://127.0.0.1:{run.env['MONGO_PORT']}/video2mp3?directConnection=true"


def _messages(path: Path) -> Iterator[media_pb2.UploadVideoRequest]:
    """What a gRPC client streams: options in the first message, 1 MiB of bytes in each."""
    with open(path, "rb") as f:
        first = media_pb2.UploadVideoRequest(filename=path.name)
        first.body.content_type = "video/mp4"
        first.body.data = f.read(GRPC_MESSAGE)
        yield first
        while data := f.read(GRPC_MESSAGE):
            yield media_pb2.UploadVideoRequest(body=httpbody_pb2.HttpBody(data=data))


def measure_uploads(run: MakeRun, path: str | os.PathLike, rounds: int = 3,
                    say: Callable[[str], None] = print) -> dict:
    """Times each way `rounds` times, the order rotating each round.
    Returns {"bytes", "rounds", "times": {way: [s...]}, "median_s": {way: s},
    "ratio": {way: raw median / way median}, "goal": {way: ratio wanted}, "ok": bool}."""
    path = Path(path)
    ways = Ways(run)
    try:
        todo = ways.all()
        names = list(todo)
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                took = todo[name](path)
                times[name].append(took)
                say(f"  round {r + 1}: {name:<5} {took:6.2f} s")
    finally:
        ways.close()
    median = {n: statistics.median(ts) for n, ts in times.items()}
    ratio = {n: median["raw"] / median[n] for n in names}
    return {"bytes": path.stat().st_size, "rounds": rounds, "times": times, "median_s": median,
            "ratio": ratio, "goal": dict(GOALS), "ok": all(ratio[n] >= GOALS[n] - 1e-9 for n in names)}


def measure_upload_rss(run: MakeRun, path: str | os.PathLike, interval: float = 0.05) -> dict:
    """Uploads `path` through REST (curl streaming it) while sampling the
    gateway's and Envoy's RSS. Returns {"seconds", "peak_mb": {name: MB}}."""
    path = Path(path)
    ways = Ways(run)
    pids = run.pids()
    procs = {name: psutil.Process(pids[name][0]) for name in ("gateway", "envoy")}
    peak = {name: 0 for name in procs}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            for name, p in procs.items():
                with contextlib.suppress(psutil.Error):
                    peak[name] = max(peak[name], p.memory_info().rss)

    sampler = threading.Thread(target=sample, name="rss", daemon=True)
    sampler.start()
    try:
        took = ways.rest_streamed(path)
    finally:
        stop.set()
        sampler.join(5)
        ways.close()
    return {"seconds": took, "bytes": path.stat().st_size,
            "peak_mb": {n: v / MB for n, v in peak.items()}, "ok": peak["gateway"] < RSS_GOAL_MB * MB}


def report(result: dict, say: Callable[[str], None] = print) -> None:
    say(f"{result['bytes'] / 1e6:.0f} MB, median of {result['rounds']} rounds:")
    for name, s in result["median_s"].items():
        ratio, goal = result["ratio"][name], result["goal"][name]
        verdict = "" if name == "raw" else ("ok" if ratio >= goal - 1e-9 else "MISSED")
        say(f"  {LABELS[name]:<20} {s:6.2f} s  {result['bytes'] / s / MB:6.1f} MiB/s  "
            f"{ratio:4.2f}x  (goal >= {goal:.2f}x) {verdict}")


def wait_until_stable(path: Path, quiet_s: float = 5.0, timeout: float = 1800) -> None:
    """Until `path` exists and its size has not changed for `quiet_s` (another process writes it)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        size = path.stat().st_size if path.exists() else -1
        if size != last:
            last, since = size, time.monotonic()
        elif size > 0 and time.monotonic() - since >= quiet_s:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} not ready after {timeout:.0f} s")
        time.sleep(0.5)


def random_file(path: Path, size: int) -> Path:
    """`size` random bytes (incompressible, as video is), kept for later runs."""
    if path.exists() and path.stat().st_size == size:
        return path
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as f:
        for left in range(size, 0, -16 * MB):
            f.write(os.urandom(min(left, 16 * MB)))
    tmp.rename(path)
    return path


def main() -> None:
    s = load(UploadsSettings)
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed: apt-get update && apt-get install -y curl")
    print(f"waiting for {s.file} to be complete ...", flush=True)
    wait_until_stable(s.file)
    big = random_file(s.file.parent / f"random{s.big_mb}mb.bin", s.big_mb * 10**6) if s.big_mb else None
    data = s.dir / f"run-{os.getpid()}"
    ok = True
    try:
        with MakeRun(data / "mongo", log=data / "make-run.log") as run:
            print(f"make run is up (gateway {run.media_addr}, Envoy {run.rest_base_url})", flush=True)
            result = measure_uploads(run, s.file, s.rounds, say=lambda m: print(m, flush=True))
            report(result)
            ok = result["ok"]
            if big is not None:
                rss = measure_upload_rss(run, big)
                print(f"{rss['bytes'] / 1e6:.0f} MB through REST in {rss['seconds']:.1f} s: gateway peak RSS "
                      f"{rss['peak_mb']['gateway']:.0f} MB (goal < {RSS_GOAL_MB} MB) "
                      f"{'ok' if rss['ok'] else 'MISSED'}; Envoy {rss['peak_mb']['envoy']:.0f} MB")
                ok = ok and rss["ok"]
    finally:
        shutil.rmtree(data, ignore_errors=True)
    print("RESULT:", "ok" if ok else "goal missed")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
