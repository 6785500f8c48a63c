"""Helpers shared by the fault-injection tests (tests/faults/).

They look at what the services left behind directly in MongoDB and RabbitMQ,
never through the proxies the tests cut:

    store = Store(mongo_server)             # the test SecantusDB, direct
    store.wait_job(job_id, lambda j: j["state"] == "PROCESSING")
    store.assert_one_mp3(job_id)            # DONE once: one MP3, nothing half-written
    pids = worker_pids(stack)               # the converter's worker processes
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pymongo
from bson import ObjectId

from localmesh.processes import wait_for
from testkit.clients import GrpcClient
from testkit.media import make_media

# Options that make a small upload a long conversion: a low-rate mono source
# encoded at 48 kHz stereo keeps LAME busy while the upload and the MP3 stay
# small (per 10 minutes of audio: ~3 s of CPU here, 2.7 MB in, 2.4 MB out).
SLOW_OPTIONS = dict(sample_rate_hz=48000, channels=2, bitrate_kbps=32)


def make_long_audio(path: str | os.PathLike, minutes: float) -> Path:
    """An audio-only FLAC tone at 8 kHz mono: ~0.45 MB and ~0.1 s to make per minute."""
    make_media(path, video_codec=None, audio_codec="flac", duration=minutes * 60,
               sample_rate=8000, layout="mono")
    return Path(path)


def user_client(stack, addr: str | None = None) -> GrpcClient:
    """A signed-up, logged-in user of `stack`, talking gRPC to `addr`
    (default: the gateway directly, so Envoy need not run)."""
    auth = GrpcClient(stack.auth_addr)
    auth.sign_up_and_login()
    auth.close()
    client = GrpcClient(addr or stack.media_addr)
    client.token = auth.token
    return client


class Store:
    """The test MongoDB, reached directly (fault tests cut only the services' path)."""

    def __init__(self, uri: str):
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000)
        self.db = self.client.get_default_database()
        self.jobs = self.db["jobs"]

    def close(self) -> None:
        self.client.close()

    def job(self, job_id: str) -> dict:
        doc = self.jobs.find_one({"_id": job_id})
        assert doc is not None, f"job {job_id} is not in MongoDB"
        return doc

    def wait_job(self, job_id: str, cond: Callable[[dict], bool], what: str = "",
                 timeout: float = 60.0, interval: float = 0.05) -> dict:
        last: dict = {}

        def check():
            last["doc"] = self.job(job_id)
            return last["doc"] if cond(last["doc"]) else None

        try:
            return wait_for(f"job {job_id} {what}", check, timeout, interval, retry_errors=False)
        except TimeoutError as e:
            doc = last.get("doc") or {}
            raise AssertionError(f"{e} (state {doc.get('state')}, attempts {doc.get('attempts')}, "
                                 f"error {doc.get('error')!r})") from None

    def wait_final(self, job_id: str, timeout: float = 120.0) -> dict:
        return self.wait_job(job_id, lambda j: j["state"] in ("DONE", "FAILED"), "to end", timeout)

    # -- GridFS -------------------------------------------------------------------

    def mp3_files(self, job_id: str) -> list[dict]:
        return list(self.db["mp3s.files"].find({"metadata.job_id": job_id}))

    def chunks(self, file_id: ObjectId, bucket: str = "mp3s") -> int:
        return self.db[f"{bucket}.chunks"].count_documents({"files_id": file_id})

    def orphan_chunk_files(self, bucket: str = "mp3s") -> set:
        """files_ids that have chunks but no files document (half-written files)."""
        have = set(self.db[f"{bucket}.files"].distinct("_id"))
        return set(self.db[f"{bucket}.chunks"].distinct("files_id")) - have

    def assert_one_mp3(self, job_id: str) -> dict:
        """The job is DONE with exactly one complete MP3 in bucket mp3s, and no
        attempt left anything half-written. Returns the job."""
        job = self.job(job_id)
        assert job["state"] == "DONE", (job["state"], job.get("error"))
        files = self.mp3_files(job_id)
        assert [f["_id"] for f in files] == [job["mp3_fid"]], (files, job["mp3_fid"])
        assert files[0]["length"] == job["mp3_size"] > 0
        n = self.chunks(job["mp3_fid"])
        assert n == -(-files[0]["length"] // files[0]["chunkSize"]), "the MP3's chunks are not all there"
        assert job.get("pending_mp3_fids") == [], f"attempts not cleaned up: {job.get('pending_mp3_fids')}"
        return job

    def assert_attempt_gone(self, mp3_fid: ObjectId) -> None:
        """A crashed or abandoned attempt's MP3 left neither a file nor chunks."""
        assert self.db["mp3s.files"].count_documents({"_id": mp3_fid}) == 0
        assert self.chunks(mp3_fid) == 0, f"half-written MP3 {mp3_fid} left behind"


# -- the converter's processes ----------------------------------------------------

def worker_pids(stack) -> list[int]:
    return stack.converter_workers()


def kill_worker(pid: int) -> None:
    """SIGKILL one worker process and wait until it is gone."""
    p = psutil.Process(pid)
    p.kill()
    p.wait(10)
