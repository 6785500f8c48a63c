"""`make soak`: many users, random faults, and nothing may be lost.

A bounded run on loopback against a mesh of its own (testkit/testbed.py: an
in-memory SecantusDB, a MySQL database and a queue of its own on the
machine's MariaDB and RabbitMQ, which are never stopped). The gateway and the
converter reach MongoDB and RabbitMQ through TCP proxies (testkit/tcp_proxy.py)
so connections can be cut without touching the real servers.

  * CLIENTS concurrent users, half gRPC and half REST, through Envoy, upload
    JOBS small generated videos (1-2 s, H.264 + AAC; faststart MKV and MP4,
    converted while they upload, and MP4 with its index at the end, converted
    after) between them and poll
    each job until it is DONE or FAILED. An upload refused while a dependency
    is cut (UNAVAILABLE / 503, RESOURCE_EXHAUSTED / 429, a reset connection)
    is retried, as a real client would; a job counts once its upload succeeded.
  * Meanwhile faults are injected at random (in shuffled rounds, so every
    kind occurs): SIGKILL of a converter worker process, a cut of every
    MongoDB connection, a cut of every RabbitMQ connection (each cut lasts
    0.5-5 s, then the proxy listens again: shorter than the services' 3 s
    MongoDB timeout, an RPC just waits; longer, it fails with UNAVAILABLE).
  * Faults go on until every client has seen all its jobs final, or for at
    most --fault-window seconds, after which the rest get --settle seconds
    without faults. Then MongoDB is read directly: a job the client was told
    exists is DONE (with its MP3), FAILED (with a reason) or LOST; an MP3 file
    beyond the first for one job is a DUPLICATE; a GridFS chunk of no file
    (half-written and never cleaned up) is an ORPHAN. A worker killed while it
    deletes a finished job's video leaves its chunks to the retention sweep
    (every second here), so orphans are counted once none is left or after
    CLEANUP_S.

It prints one summary line and exits 0 only when every job is DONE and
nothing is lost, duplicated or orphaned. Options: --jobs 200 --clients 20
--seed N --fault-every S (mean seconds between faults) --fault-window S
--settle S --think S (longest pause of a client between uploads) --workers N
(converter workers) --log-dir DIR (keep the services' logs there), each also
an environment variable for `make soak`: SOAK_JOBS=50 SOAK_SEED=7 make soak
(SOAK_CLIENTS, SOAK_FAULT_EVERY, SOAK_FAULT_WINDOW, SOAK_SETTLE, SOAK_THINK,
SOAK_WORKERS, SOAK_LOG_DIR).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
import pymongo
import requests

from localmesh.stack import Stack
from testkit.clients import GrpcClient, RestClient, unique_email
from testkit.media import make_media
from testkit.tcp_proxy import TcpProxy
from testkit.testbed import Testbed
from video2mp3.core.settings import load, setting
from video2mp3.gateway import container_sniff

FAULT_KINDS = ("worker_kill", "mongo_cut", "rabbit_cut")
RETRYABLE_GRPC = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                  grpc.StatusCode.DEADLINE_EXCEEDED}
RETRYABLE_HTTP = {429, 502, 503, 504}
SERVICES = ("auth", "gateway", "converter", "envoy")


@dataclasses.dataclass
class Result:
    jobs: int = 0                 # jobs whose upload succeeded
    streamed: int = 0             # of which streamable: converted while uploading
    clients: int = 0
    seed: int = 0
    faults: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    done: int = 0
    failed: int = 0
    lost: int = 0
    duplicated: int = 0           # jobs with more than one MP3 file
    orphan_chunks: int = 0        # GridFS chunks (videos, mp3s) that belong to no file
    upload_retries: int = 0
    upload_errors: int = 0        # uploads that never succeeded (should be 0)
    elapsed_s: float = 0.0
    peak_rss_mb: dict = dataclasses.field(default_factory=dict)
    rss_growth_mb: dict = dataclasses.field(default_factory=dict)
    failures: list = dataclasses.field(default_factory=list)   # (job id, reason)
    lost_ids: list = dataclasses.field(default_factory=list)
    orphans: list = dataclasses.field(default_factory=list)    # (bucket, files_id, chunks, upload record)

    @property
    def ok(self) -> bool:
        return (self.done == self.jobs and self.jobs > 0 and not self.lost and not self.duplicated
                and not self.upload_errors and not self.orphan_chunks)

    def summary_line(self) -> str:
        faults = " ".join(f"{k}={self.faults[k]}" for k in FAULT_KINDS)
        rss = " ".join(f"{k}={v:.0f}" for k, v in self.peak_rss_mb.items())
        growth = " ".join(f"{k}={v:+.0f}" for k, v in self.rss_growth_mb.items())
        return (f"soak: jobs={self.jobs} streamed={self.streamed} clients={self.clients} seed={self.seed} "
                f"faults={sum(self.faults.values())} ({faults}) "
                f"DONE={self.done} FAILED={self.failed} lost={self.lost} "
                f"duplicated_mp3s={self.duplicated} orphan_chunks={self.orphan_chunks} "
                f"upload_retries={self.upload_retries} "
                f"upload_errors={self.upload_errors} elapsed={self.elapsed_s:.0f}s "
                f"peak_rss_mb: {rss} rss_growth_mb: {growth}")


# ------------------------------------------------------------------ clients

class SoakClient:
    """One user: uploads its share of the jobs (retrying what a dependency
    outage refused), then polls them until each is final."""

    def __init__(self, index: int, stack: Stack, videos: list[Path], take_job, rng: random.Random,
                 stop: threading.Event, think_s: float = 1.0):
        self.index = index
        self.kind = "grpc" if index % 2 == 0 else "rest"
        self.stack = stack
        self.videos = videos
        self.take_job = take_job
        self.rng = rng
        self.stop = stop
        self.think_s = think_s  # at most this long between two uploads
        self.job_ids: list[str] = []
        self.streamed = 0  # uploads of streamable files that succeeded
        self.final: dict[str, str] = {}
        self.retries = 0
        self.errors: list[str] = []
        self.uploads_done = threading.Event()  # every upload of this client answered
        if self.kind == "grpc":
            self.grpc = GrpcClient(stack.envoy_addr)
        else:
            self.rest = RestClient(stack.rest_base_url)

    def close(self) -> None:
        if self.kind == "grpc":
            self.grpc.close()

    def _retrying(self, what: str, attempt, give_up_after: float = 180.0):
        """attempt() until it returns non-None; retries retryable failures with backoff."""
        deadline = time.monotonic() + give_up_after
        delay = 0.2
        while not self.stop.is_set():
            try:
                value = attempt()
                if value is not None:
                    return value
                why = "retryable answer"
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE_GRPC:
                    raise RuntimeError(f"{what}: {e.code().name} {e.details()}") from None
                why = e.code().name
            except requests.RequestException as e:  # reset connection, timeout
                why = type(e).__name__
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: still failing after {give_up_after:.0f}s ({why})")
            self.retries += 1
            self.stop.wait(delay + self.rng.uniform(0, delay))
            delay = min(delay * 2, 3.0)
        raise RuntimeError(f"{what}: stopped")

    def sign_up(self) -> None:
        email, password = unique_email(f"soak{self.index}"), "correct horse soak"
        if self.kind == "grpc":
            self._retrying("sign up", lambda: self.grpc.sign_up_and_login(email, password))
        else:
            self._retrying("sign up", lambda: self._rest_sign_up(email, password))

    def _rest_sign_up(self, email: str, password: str):
        base = self.rest.base
        r = self.rest.s.post(f"{base}/v1/users", json={"email": email, "password": password}, timeout=20)
        if r.status_code not in (200, 409):
            return self._http_retryable(r, "sign up")
        r = self.rest.s.post(f"{base}/v1/login", json={"email": email, "password": password}, timeout=20)
        if r.status_code != 200:
            return self._http_retryable(r, "log in")
        self.rest.token = r.json()["access_token"]
        return email

    @staticmethod
    def _http_retryable(r: requests.Response, what: str):
        if r.status_code in RETRYABLE_HTTP:
            return None
        raise RuntimeError(f"{what}: HTTP {r.status_code} {r.text[:200]}")

    def upload(self, path: Path) -> str:
        if self.kind == "grpc":
            def attempt():
                return self.grpc.upload(path, filename=path.name, timeout=30).job_id
        else:
            def attempt():
                r = self.rest.upload(path, params={"filename": path.name})
                if r.status_code != 200:
                    return self._http_retryable(r, "upload")
                return r.json()["job_id"]
        return self._retrying(f"upload of {path.name}", attempt)

    def state(self, job_id: str) -> str | None:
        """The job's state, or None if the answer was a retryable failure."""
        try:
            if self.kind == "grpc":
                from video2mp3.media.v1 import media_pb2
                return media_pb2.JobState.Name(self.grpc.job(job_id).state)
            r = self.rest.get(f"/v1/jobs/{job_id}")
            if r.status_code != 200:
                return self._http_retryable(r, "get job")
            return r.json()["state"]
        except grpc.RpcError as e:
            if e.code() in RETRYABLE_GRPC:
                return None
            raise
        except requests.RequestException:
            return None

    def run(self) -> None:
        try:
            try:
                self.sign_up()
                while (n := self.take_job()) is not None:
                    video = self.videos[n % len(self.videos)]
                    self.job_ids.append(self.upload(video))
                    self.streamed += streamable(video)
                    self.stop.wait(self.rng.uniform(0, self.think_s))
            finally:
                self.uploads_done.set()
            pending = list(self.job_ids)
            while pending and not self.stop.is_set():
                for job_id in list(pending):
                    s = self.state(job_id)
                    if s in ("JOB_STATE_DONE", "JOB_STATE_FAILED"):
                        self.final[job_id] = s
                        pending.remove(job_id)
                self.stop.wait(0.5)
        except Exception as e:  # noqa: BLE001 - reported in the summary
            self.errors.append(f"client {self.index} ({self.kind}): {e}")


# ------------------------------------------------------------------ faults

class FaultInjector(threading.Thread):
    def __init__(self, stack: Stack, mongo: TcpProxy, rabbit: TcpProxy, rng: random.Random,
                 every_s: float):
        super().__init__(name="faults", daemon=True)
        self.stack, self.mongo, self.rabbit = stack, mongo, rabbit
        self.rng, self.every_s = rng, every_s
        self.counts: collections.Counter = collections.Counter()
        self.stop_event = threading.Event()
        self.log: list[str] = []

    def _kinds(self):
        """Shuffled rounds of every kind: each occurs once the run has had a few faults."""
        while True:
            kinds = list(FAULT_KINDS)
            self.rng.shuffle(kinds)
            yield from kinds

    def run(self) -> None:
        kinds = self._kinds()
        while not self.stop_event.wait(self.rng.uniform(0.5, 1.5) * self.every_s):
            kind = next(kinds)
            if kind == "worker_kill":
                pids = self.stack.converter_workers()
                if not pids:
                    continue
                pid = self.rng.choice(pids)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
            else:
                proxy = self.mongo if kind == "mongo_cut" else self.rabbit
                proxy.cut()
                self.stop_event.wait(self.rng.uniform(0.5, 5.0))
                proxy.restore()
            self.counts[kind] += 1
            self.log.append(f"{time.strftime('%H:%M:%S')} {kind}")

    def finish(self) -> None:
        self.stop_event.set()
        self.join(10)
        self.mongo.restore()
        self.rabbit.restore()


class RssSampler(threading.Thread):
    """RSS of each service's process tree (the converter with its workers):
    the peak, and the growth from the first half of the run to the second
    (peak of the second half minus peak of the first), which stays near 0
    when memory is flat."""

    def __init__(self, stack: Stack, every_s: float = 0.5):
        super().__init__(name="rss", daemon=True)
        self.stack, self.every_s = stack, every_s
        self.samples: dict[str, list[float]] = {name: [] for name in SERVICES}
        self.stop_event = threading.Event()

    @property
    def peak_mb(self) -> dict[str, float]:
        return {name: max(v, default=0.0) for name, v in self.samples.items()}

    @property
    def growth_mb(self) -> dict[str, float]:
        out = {}
        for name, v in self.samples.items():
            half = len(v) // 2
            out[name] = (max(v[half:]) - max(v[:half])) if half else 0.0
        return out

    def sample(self) -> None:
        for name in SERVICES:
            c = self.stack.children.get(name)
            if c is None or not c.alive:
                continue
            total = 0
            try:
                root = psutil.Process(c.pid)
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        continue
            except psutil.Error:
                continue
            self.samples[name].append(total / 1e6)

    def run(self) -> None:
        while not self.stop_event.wait(self.every_s):
            self.sample()


# ------------------------------------------------------------------ the run

# Streamed (converted while uploading) and not, in turn: a faststart MKV and
# MP4 are read as they arrive, an MP4 with its index at the end after its
# upload (gateway/container_sniff.py).
SWEEP_S = 1.0     # the retention sweep's interval in the soak's mesh
CLEANUP_S = 10.0  # how long orphans may take to go once every job is final

VIDEO_KINDS = ((".mkv", False), (".mp4", True), (".mp4", False))


def make_videos(folder: Path, count: int = 6) -> list[Path]:
    """Small test videos, 1-2 s each with different tones, made once per run:
    about 0.5 MB each (noisy 320x240 pictures), so an upload spans a few
    GridFS chunks and a streamed conversion really waits for some."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        ext, faststart = VIDEO_KINDS[i % len(VIDEO_KINDS)]
        path = folder / f"soak{i}{'-fast' if faststart else ''}{ext}"
        make_media(path, video_codec="h264", audio_codec="aac", duration=1.0 + i / max(1, count - 1),
                   freq=330.0 + 110 * i, faststart=faststart, video_size=(320, 240), video_noise=40)
        out.append(path)
    return out


def streamable(path: Path) -> bool:
    with open(path, "rb") as f:
        return container_sniff.streamable(f.read(container_sniff.SNIFF_BYTES))


def orphan_chunks(db) -> list[tuple]:
    """(bucket, files_id, chunks, its in-progress upload record) of every
    GridFS file that has chunks but no files document."""
    found = []
    for bucket in ("videos", "mp3s"):
        files = db[f"{bucket}.files"].distinct("_id")
        chunks = db[f"{bucket}.chunks"]
        for fid in chunks.distinct("files_id", {"files_id": {"$nin": files}}):
            found.append((bucket, fid, chunks.count_documents({"files_id": fid}),
                          db[f"{bucket}.uploads"].find_one({"_id": fid})))
    return found


def account(mongo_uri: str, job_ids: list[str], result: Result) -> None:
    """Read every job and its MP3 files directly from MongoDB."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
    try:
        db = client.get_default_database()
        mp3_count = collections.Counter(
            d["metadata"]["job_id"] for d in db["mp3s.files"].find({}, {"metadata.job_id": 1}))
        for job_id in job_ids:
            doc = db["jobs"].find_one({"_id": job_id}) or {}  # {}: no such job
            state = doc["state"] if doc else None
            if mp3_count[job_id] > 1:
                result.duplicated += 1
            if state == "DONE" and db["mp3s.files"].find_one({"_id": doc["mp3_fid"]}):
                result.done += 1
            elif state == "FAILED":
                result.failed += 1
                result.failures.append((job_id, doc.get("error", "")))
            else:
                result.lost += 1
                result.lost_ids.append((job_id, state))
        deadline = time.monotonic() + CLEANUP_S
        while (orphans := orphan_chunks(db)) and time.monotonic() < deadline:
            time.sleep(SWEEP_S / 2)
        result.orphans = orphans
        result.orphan_chunks = sum(n for _, _, n, _ in orphans)
    finally:
        client.close()


def run(*, jobs: int = 200, clients: int = 20, seed: int = 1, fault_every_s: float = 2.0,
        workers: int = 2, log_dir: str | os.PathLike | None = None,
        fault_window_s: float = 300.0, settle_s: float = 180.0, think_s: float = 1.0,
        say=lambda text: None) -> Result:
    """The whole soak; returns its Result (see the module doc)."""
    rng = random.Random(seed)
    result = Result(clients=clients, seed=seed)
    own_dir = log_dir is None  # a temporary one, removed unless the run fails
    log_dir = Path(tempfile.mkdtemp(prefix="video2mp3-soak-")) if log_dir is None else Path(log_dir)
    started = time.monotonic()
    try:
        videos = make_videos(log_dir / "videos")
        with Testbed(log_dir) as bed:
            mongo_proxy = TcpProxy("127.0.0.1", bed.mongo_port).start()
            rabbit_proxy = TcpProxy(bed.rabbit["RABBITMQ_HOST"], int(bed.rabbit["RABBITMQ_PORT"])).start()
            env = bed.service_env(
                mongo_port=mongo_proxy.port, rabbit_port=rabbit_proxy.port,
                CONVERTER_WORKERS=workers,
                # The express lane too (gateway/outbox.py): its worker is killed like any.
                CONVERTER_EXPRESS_WORKERS=1,
                # Quicker recovery than the defaults, so a bounded run ends soon
                # after its last fault: the outbox re-publishes every second and
                # a killed worker's job is taken over after 3 s.
                REPUBLISH_INTERVAL_S=1, CONVERTER_LEASE_S=3, CONVERTER_RETRY_DELAY_S=0.5,
                RETENTION_SWEEP_INTERVAL_S=SWEEP_S,
                MAX_CONCURRENT_UPLOADS=max(8, clients),
            )
            stack = Stack(env, log_dir=log_dir)
            try:
                stack.start()
                say(f"mesh up (logs in {log_dir}); {jobs} jobs from {clients} clients, seed {seed}")
                _drive(stack, bed, mongo_proxy, rabbit_proxy, videos, jobs, clients, rng,
                       fault_every_s, fault_window_s, settle_s, think_s, result, say)
            finally:
                stack.close()
                mongo_proxy.stop()
                rabbit_proxy.stop()
    finally:
        result.elapsed_s = time.monotonic() - started
        if own_dir and result.ok:
            shutil.rmtree(log_dir, ignore_errors=True)
        elif own_dir:
            say(f"the services' logs are kept in {log_dir}")
    return result


def _drive(stack, bed, mongo_proxy, rabbit_proxy, videos, jobs, clients, rng, fault_every_s,
           fault_window_s, settle_s, think_s, result, say) -> None:
    counter = itertools.count()
    lock = threading.Lock()

    def take_job():
        with lock:
            n = next(counter)
        return n if n < jobs else None

    stop = threading.Event()
    soakers = [SoakClient(i, stack, videos, take_job, random.Random(rng.random()), stop, think_s)
               for i in range(clients)]
    threads = [threading.Thread(target=c.run, name=f"client-{i}", daemon=True)
               for i, c in enumerate(soakers)]
    faults = FaultInjector(stack, mongo_proxy, rabbit_proxy, random.Random(rng.random()), fault_every_s)
    rss = RssSampler(stack)
    rss.start()
    faults.start()
    for t in threads:
        t.start()
    try:
        # Faults go on while uploads are made and jobs converted, for at most
        # fault_window_s; then they stop and what is left may settle.
        fault_end = time.monotonic() + fault_window_s
        deadline = None
        while any(t.is_alive() for t in threads):
            if deadline is None and time.monotonic() > fault_end:
                faults.finish()
                say(f"fault window over after {sum(faults.counts.values())} faults; settling")
                deadline = time.monotonic() + settle_s
            if deadline is not None and time.monotonic() > deadline:
                say("settle time is over; whatever is not final now is lost")
                break
            time.sleep(0.5)
    finally:
        stop.set()
        faults.finish()
        for t in threads:
            t.join(30)
        rss.stop_event.set()
        rss.join(5)
        for c in soakers:
            c.close()
    result.faults = faults.counts
    result.peak_rss_mb = rss.peak_mb
    result.rss_growth_mb = rss.growth_mb
    result.upload_retries = sum(c.retries for c in soakers)
    errors = [e for c in soakers for e in c.errors]
    result.upload_errors = len(errors)
    for e in errors[:5]:
        say(e)
    job_ids = [j for c in soakers for j in c.job_ids]
    result.jobs = len(job_ids)
    result.streamed = sum(c.streamed for c in soakers)
    account(bed.mongo_uri(), job_ids, result)
    for job_id, reason in result.failures[:5]:
        say(f"FAILED {job_id}: {reason}")
    for job_id, state in result.lost_ids[:5]:
        say(f"lost {job_id}: {state}")
    for bucket, fid, n, upload in result.orphans[:5]:
        say(f"orphan: {n} chunk(s) of {bucket} file {fid}, upload record {upload}")


@dataclasses.dataclass(frozen=True)
class SoakSettings:
    """`make soak`'s knobs; the command-line options override them."""
    jobs: int = setting("SOAK_JOBS", 200)
    clients: int = setting("SOAK_CLIENTS", 20)
    seed: int = setting("SOAK_SEED", 0)  # 0: from the clock
    fault_every: float = setting("SOAK_FAULT_EVERY", 2.0)
    fault_window: float = setting("SOAK_FAULT_WINDOW", 300.0)
    settle: float = setting("SOAK_SETTLE", 180.0)
    think: float = setting("SOAK_THINK", 1.0)
    workers: int = setting("SOAK_WORKERS", 2)
    log_dir: str | None = setting("SOAK_LOG_DIR", None)


def main(argv=None) -> int:
    s = load(SoakSettings)
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=s.jobs)
    p.add_argument("--clients", type=int, default=s.clients)
    p.add_argument("--seed", type=int, default=s.seed or int(time.time()) % 100000)
    p.add_argument("--fault-every", type=float, default=s.fault_every,
                   help="mean seconds between faults")
    p.add_argument("--fault-window", type=float, default=s.fault_window,
                   help="seconds after which no more faults are injected")
    p.add_argument("--settle", type=float, default=s.settle,
                   help="seconds a job may take to finish after the last fault")
    p.add_argument("--think", type=float, default=s.think,
                   help="a client waits up to this many seconds between two uploads")
    p.add_argument("--workers", type=int, default=s.workers)
    p.add_argument("--log-dir", default=s.log_dir)
    args = p.parse_args(argv)

    def say(text: str) -> None:
        print(f"soak | {text}", file=sys.stderr, flush=True)

    result = run(jobs=args.jobs, clients=args.clients, seed=args.seed, fault_every_s=args.fault_every,
                 workers=args.workers, log_dir=args.log_dir, fault_window_s=args.fault_window,
                 settle_s=args.settle, think_s=args.think, say=say)
    print(result.summary_line(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
