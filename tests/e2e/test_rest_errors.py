"""Every kind of error, as a REST caller gets it through Envoy: the mapped
HTTP status and the google.rpc.Status JSON body with its details (ErrorInfo
always, BadRequest for bad input, RetryInfo where waiting helps). 410
(MP3_EXPIRED) is in tests/e2e/test_retention.py."""
from __future__ import annotations

import threading
import time
import uuid

import grpc
import pytest
import requests

from localmesh.processes import wait_for
from testkit.faults import SLOW_OPTIONS, make_long_audio, user_client
from testkit.status import rest_details
from testkit.tcp_proxy import TcpProxy
from video2mp3.media.v1 import media_pb2

WATCHERS = 1
MAX_UPLOAD = 8_000_000  # the long audio (~4.5 MB) fits


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory):
    return make_long_audio(tmp_path_factory.mktemp("long") / "long.flac", minutes=10)


@pytest.fixture
def small_mesh(mesh_factory, mongo_server):
    with TcpProxy(mongo_server.host, mongo_server.port) as proxy:
        stack = mesh_factory(MAX_UPLOAD_BYTES=MAX_UPLOAD, MAX_WATCHERS=WATCHERS,
                             MONGO_URI=mongo_server.via(*proxy.address), MONGO_TIMEOUT_MS=1000)
        yield stack, proxy


def check(r: requests.Response, status: int, code: grpc.StatusCode, reason: str, *,
          fields=(), retry: bool = False) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["code"] == code.value[0], body
    assert body["message"], body
    details = rest_details(body)
    assert details["ErrorInfo"]["reason"] == reason
    assert details["ErrorInfo"]["domain"] == "video2mp3"
    if fields:
        assert [v["field"] for v in details["BadRequest"]["field_violations"]] == list(fields), body
    else:
        assert "BadRequest" not in details, body
    assert ("RetryInfo" in details) == retry, body
    return body


def test_each_error_kind_over_rest(small_mesh, clip, long_audio):
    stack, proxy = small_mesh
    client = user_client(stack)
    base, auth = stack.rest_base_url, {"Authorization": f"Bearer {client.token}"}

    # 400: bad input names the field.
    check(requests.get(f"{base}/v1/jobs", params={"filter": "colour = red"}, headers=auth, timeout=10),
          400, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FILTER", fields=["filter"])
    check(requests.get(f"{base}/v1/jobs", params={"page_size": -5}, headers=auth, timeout=10),
          400, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE", fields=["page_size"])
    check(requests.post(f"{base}/v1/videos", params={"filename": "a.mp4", "request_id": "twice"},
                        data=b"\x00" * 10, headers=auth, timeout=10),
          400, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST_ID", fields=["request_id"])
    # 401
    body = check(requests.get(f"{base}/v1/jobs", timeout=10),
                 401, grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    assert "authorization" in body["message"].lower() or "token" in body["message"]
    # 404, for a job that is not there and for a delete of one
    missing = uuid.uuid4().hex
    check(requests.get(f"{base}/v1/jobs/{missing}", headers=auth, timeout=10),
          404, grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    check(requests.delete(f"{base}/v1/jobs/{missing}", headers=auth, timeout=10),
          404, grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    check(requests.get(f"{base}/v1/jobs/{missing}:watch", headers=auth, timeout=10),
          404, grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    # 409: the job's state is the problem (FAILED_PRECONDITION), not the request.
    job = client.upload(long_audio, filename="long.flac", **SLOW_OPTIONS)
    body = check(requests.get(f"{base}/v1/jobs/{job.job_id}/mp3", headers=auth, timeout=10),
                 409, grpc.StatusCode.FAILED_PRECONDITION, "JOB_NOT_DONE")
    assert "DONE" in body["message"]
    # 429: one watcher at most here; the second is told to retry later.
    stream = client.media.WatchJob(media_pb2.WatchJobRequest(job_id=job.job_id), metadata=client.md,
                                   timeout=60)
    next(stream)
    body = check(requests.get(f"{base}/v1/jobs/{job.job_id}:watch", headers=auth, timeout=10),
                 429, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHERS", retry=True)
    assert "retry" in body["message"]
    stream.cancel()
    # 413: over MAX_UPLOAD_BYTES
    check(requests.post(f"{base}/v1/videos", params={"filename": "big.mp4"}, data=b"\x00" * (2 * MAX_UPLOAD),
                        headers=auth, timeout=30),
          413, grpc.StatusCode.RESOURCE_EXHAUSTED, "UPLOAD_TOO_LARGE")
    # 431: headers over Envoy's max_request_headers_kb (Envoy answers itself, no body)
    r = requests.get(f"{base}/v1/jobs", headers={**auth, "x-padding": "p" * 20_000}, timeout=10)
    assert r.status_code == 431, r.status_code
    # 503: MongoDB unreachable
    proxy.cut()
    try:
        check(requests.get(f"{base}/v1/jobs/{job.job_id}", headers=auth, timeout=20),
              503, grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE", retry=True)
    finally:
        proxy.restore()


def test_oversized_grpc_metadata_is_refused_and_the_server_goes_on(mesh):
    """The gateway's own bound (rpc/server.py MAX_METADATA_BYTES),
    for gRPC clients that reach it directly."""
    client = user_client(mesh)
    with pytest.raises(grpc.RpcError) as e:
        client.media.ListJobs(media_pb2.ListJobsRequest(), timeout=10,
                              metadata=[*client.md, ("x-padding", "p" * 40_000)])
    assert e.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL,
                              grpc.StatusCode.UNAVAILABLE), e.value
    assert client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=client.md, timeout=10) is not None


def test_watchers_over_the_limit_get_resource_exhausted_and_the_rest_still_works(small_mesh, long_audio):
    stack, _ = small_mesh
    client = user_client(stack)
    job = client.upload(long_audio, filename="long.flac", **SLOW_OPTIONS)
    first = client.media.WatchJob(media_pb2.WatchJobRequest(job_id=job.job_id), metadata=client.md, timeout=60)
    next(first)
    with pytest.raises(grpc.RpcError) as e:
        list(client.media.WatchJob(media_pb2.WatchJobRequest(job_id=job.job_id), metadata=client.md,
                                   timeout=10))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.job(job.job_id).job_id == job.job_id  # other RPCs unaffected
    # A cancelled watcher gives its slot back.
    first.cancel()
    done = threading.Event()

    def again():
        wait_for("the slot to be free", lambda: _try_watch(client, job.job_id), timeout=10)
        done.set()

    t = threading.Thread(target=again)
    t.start()
    t.join(15)
    assert done.is_set()


def _try_watch(client, job_id) -> bool:
    stream = client.media.WatchJob(media_pb2.WatchJobRequest(job_id=job_id), metadata=client.md, timeout=10)
    try:
        next(stream)
        return True
    except grpc.RpcError:
        time.sleep(0.1)
        return False
    finally:
        stream.cancel()
