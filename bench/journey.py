"""One user's journey through REST, timed: upload -> watch -> download.

What `make bench-latency` and `make bench-load` time for every job, the way a
REST client does it: `POST /v1/videos` with the file's bytes, then
`GET /v1/jobs/{id}:watch` (WatchJob: the JSON array Envoy writes as the
messages come, read as it arrives) until the job is final, then
`GET /v1/jobs/{id}/mp3`. The MP3 is "in hand" when its last byte is read.

    user = Journey(base_url, token)     # a requests.Session of its own
    timing = user.run(path)             # Timing(upload_s, done_s, total_s, mp3_bytes)
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import requests

FINAL = ("JOB_STATE_DONE", "JOB_STATE_FAILED")


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds from the upload's start: answered, DONE seen by the watcher, MP3 in hand."""

    upload_s: float
    done_s: float
    total_s: float
    mp3_bytes: int


class Journey:
    def __init__(self, base_url: str, token: str):
        self.base = base_url.rstrip("/")
        self.s = requests.Session()
        self.h = {"Authorization": f"Bearer {token}"}

    def run(self, path: Path, *, delete: bool = True) -> Timing:
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            r = self.s.post(f"{self.base}/v1/videos", params={"filename": path.name}, data=f,
                            headers={**self.h, "Content-Type": "video/mp4"}, timeout=600)
        if r.status_code != 200:
            raise RuntimeError(f"upload of {path.name}: HTTP {r.status_code} {r.text[:300]}")
        answered = time.perf_counter()
        job = r.json()
        job_id = job["job_id"]
        if job["state"] not in FINAL:
            job = self.watch(job_id)
        done = time.perf_counter()
        if job["state"] != "JOB_STATE_DONE":
            raise RuntimeError(f"job {job_id} ended {job['state']}: {job.get('error')}")
        got = 0
        with self.s.get(f"{self.base}/v1/jobs/{job_id}/mp3", headers=self.h, stream=True, timeout=600) as d:
            if d.status_code != 200:
                raise RuntimeError(f"download of {job_id}: HTTP {d.status_code} {d.text[:300]}")
            for piece in d.iter_content(chunk_size=1 << 20):
                got += len(piece)
        end = time.perf_counter()
        if delete:
            self.s.delete(f"{self.base}/v1/jobs/{job_id}", headers=self.h, timeout=60)
        return Timing(answered - t0, done - t0, end - t0, got)

    def watch(self, job_id: str) -> dict:
        """WatchJob through REST until the job is final: its last message.
        Each message arrives as its own piece of the JSON array (`[{..}`,
        `,{..}`, then `]`), so the final one is parsed as soon as it is in."""
        with self.s.get(f"{self.base}/v1/jobs/{job_id}:watch", headers=self.h, stream=True,
                        timeout=600) as r:
            if r.status_code != 200:
                raise RuntimeError(f"watch of {job_id}: HTTP {r.status_code} {r.text[:300]}")
            text = ""
            last: dict = {}
            for piece in r.iter_content(chunk_size=None):
                text += piece.decode()
                # Complete messages so far: the array with its end supplied.
                body = text.rstrip()
                try:
                    messages = json.loads(body if body.endswith("]") else body + "]")
                except json.JSONDecodeError:
                    continue  # a message cut in two: wait for its rest
                if messages:
                    last = messages[-1]
                    if last.get("state") in FINAL:
                        return last
        if last.get("state") in FINAL:
            return last
        raise RuntimeError(f"watch of {job_id} ended before the job was final: {last}")
