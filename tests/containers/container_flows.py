"""The user's journey through a containerised Envoy, over REST and over gRPC:
sign-up, login, upload, watch, download, health. Shared by the compose and
the kube play tests."""
from __future__ import annotations

import json
from pathlib import Path

import requests

from testkit.clients import GrpcClient, RestClient
from testkit.media import analyse_mp3
from video2mp3.media.v1 import media_pb2

DONE = "JOB_STATE_DONE"


def check_mp3(data: bytes, seconds: float = 5.0) -> None:
    duration, freq, _, _ = analyse_mp3(data)
    assert abs(duration - seconds) < 0.1, duration
    assert abs(freq - 440) < 5, freq


def rest_session(base_url: str, video: Path) -> str:
    """Returns the job id."""
    client = RestClient(base_url)
    client.sign_up_and_login()
    r = client.upload(video, params={"filename": "holiday.mp4", "bitrate_kbps": "128"})
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    # The watch stream is one JSON array, closed once the job is final.
    r = client.get(f"/v1/jobs/{job_id}:watch")
    assert r.status_code == 200, r.text
    states = json.loads(r.content)
    assert states[-1]["state"] == DONE, states[-1]
    r = client.get(f"/v1/jobs/{job_id}/mp3")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("audio/mpeg"), r.headers
    check_mp3(r.content)
    r = requests.get(f"{base_url}/health", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "healthy", "mongodb": "connected", "rabbitmq": "connected",
                        "mysql": "connected"}
    return job_id


def grpc_session(addr: str, video: Path) -> str:
    client = GrpcClient(addr)
    try:
        client.sign_up_and_login()
        job = client.upload(video, filename="holiday.mp4", bitrate_kbps=128)
        states = list(client.media.WatchJob(media_pb2.WatchJobRequest(job_id=job.job_id), metadata=client.md,
                                            timeout=120))
        assert states[-1].state == media_pb2.JOB_STATE_DONE, states[-1]
        check_mp3(client.download(job.job_id))
        health = client.media.GetHealth(media_pb2.GetHealthRequest(), timeout=10)
        assert (health.status, health.mongodb, health.rabbitmq, health.mysql) == (
            "healthy", "connected", "connected", "connected")
        return job.job_id
    finally:
        client.close()
