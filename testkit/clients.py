"""Thin test clients for the mesh: gRPC (generated stubs) and REST (requests),
so tests read as the user journey they check."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import grpc
import requests
from google.api import httpbody_pb2

from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.media.v1 import media_pb2, media_pb2_grpc

CHUNK = 64 * 1024


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


class GrpcClient:
    """Talks gRPC to one address (Envoy, or a service directly)."""

    def __init__(self, addr: str, channel: grpc.Channel | None = None):
        """`channel`: one to `addr` already made (e.g. with tracing interceptors)."""
        self.channel = channel or grpc.insecure_channel(addr)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.media = media_pb2_grpc.MediaServiceStub(self.channel)
        self.token = ""
        self.login: auth_pb2.LoginResponse | None = None  # the last Login's whole answer

    def close(self) -> None:
        self.channel.close()

    @property
    def md(self):
        return [("authorization", f"Bearer {self.token}")]

    def sign_up_and_login(self, email: str | None = None, password: str = "correct horse 1") -> str:
        email = email or unique_email()
        self.auth.SignUp(auth_pb2.SignUpRequest(email=email, password=password), timeout=20)
        self.login = self.auth.Login(auth_pb2.LoginRequest(email=email, password=password), timeout=20)
        self.token = self.login.access_token
        return email

    def upload(self, data_or_path, filename: str = "clip.mp4", timeout: float = 60, **options) -> media_pb2.Job:
        return self.media.UploadVideo(upload_messages(data_or_path, filename, **options),
                                      metadata=self.md, timeout=timeout)

    def job(self, job_id: str) -> media_pb2.Job:
        return self.media.GetJob(media_pb2.GetJobRequest(job_id=job_id), metadata=self.md, timeout=10)

    def wait(self, job_id: str, timeout: float = 120) -> media_pb2.Job:
        final = (media_pb2.JOB_STATE_DONE, media_pb2.JOB_STATE_FAILED)
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.state in final:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {media_pb2.JobState.Name(job.state)} after {timeout}s")
            time.sleep(0.2)

    def download(self, job_id: str) -> bytes:
        parts = self.media.DownloadMp3(media_pb2.DownloadMp3Request(job_id=job_id), metadata=self.md, timeout=60)
        return b"".join(p.data for p in parts)


def upload_messages(data_or_path, filename: str, **options):
    """The client-streamed upload: options in the first message, bytes in every one."""
    data = Path(data_or_path).read_bytes() if isinstance(data_or_path, (str, Path)) else data_or_path
    first = media_pb2.UploadVideoRequest(filename=filename, **options)
    first.body.content_type = "video/mp4"
    first.body.data = data[:CHUNK]
    yield first
    for i in range(CHUNK, len(data), CHUNK):
        yield media_pb2.UploadVideoRequest(body=httpbody_pb2.HttpBody(data=data[i:i + CHUNK]))


class RestClient:
    """Talks REST through Envoy's gRPC-JSON transcoder."""

    def __init__(self, base_url: str):
        self.base = base_url.rstrip("/")
        self.s = requests.Session()
        self.token = ""
        self.login: dict = {}  # the last login's whole answer (refresh_token, session_id...)

    def headers(self, token: str | None = None) -> dict:
        token = self.token if token is None else token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def sign_up_and_login(self, email: str | None = None, password: str = "correct horse 1") -> str:
        email = email or unique_email("rest")
        r = self.s.post(f"{self.base}/v1/users", json={"email": email, "password": password}, timeout=20)
        assert r.status_code == 200, r.text
        r = self.s.post(f"{self.base}/v1/login", json={"email": email, "password": password}, timeout=20)
        assert r.status_code == 200, r.text
        self.login = r.json()
        self.token = self.login["access_token"]
        return email

    def upload(self, path, params: dict | None = None, token: str | None = None,
               timeout: float = 120) -> requests.Response:
        with open(path, "rb") as f:  # a file object: requests streams it
            return self.s.post(f"{self.base}/v1/videos", params=params or {"filename": Path(path).name},
                               data=f, headers={**self.headers(token), "Content-Type": "video/mp4"},
                               timeout=timeout)

    def get(self, path: str, token: str | None = None, **kw) -> requests.Response:
        return self.s.get(f"{self.base}{path}", headers=self.headers(token), timeout=60, **kw)

    def wait(self, job_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            r = self.get(f"/v1/jobs/{job_id}")
            assert r.status_code == 200, r.text
            job = r.json()
            if job["state"] in ("JOB_STATE_DONE", "JOB_STATE_FAILED"):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s")
            time.sleep(0.2)
