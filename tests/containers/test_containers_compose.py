"""The images and the compose stack (issue 24), brought up and down by
docs/operations.md's compose commands: the user's journey through the
containerised Envoy over REST and gRPC, what the images are, and two faults:
the converter container killed mid-job, the gateway container restarted
with uploads in flight."""
from __future__ import annotations

import os
import threading
import time

import grpc
import pytest
import requests
from container_flows import check_mp3, grpc_session, rest_session
from container_kit import Stack, container_cmd, documented, port_free, run_documented
from google.api import httpbody_pb2

from localmesh.processes import free_port
from testkit.clients import GrpcClient, RestClient
from testkit.media import analyse_mp3
from video2mp3.media.v1 import media_pb2

# Bringing a stack up (images from nothing included) takes minutes.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]
PROJECT = "video2mp3"
APPS = ("auth", "gateway", "converter", "envoy")
SERVICES = (*APPS, "mysql", "rabbitmq", "mongo")


def _containers() -> dict[str, str]:
    out = container_cmd("ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}", "--format",
                        '{{.Names}} {{index .Labels "com.docker.compose.service"}}').stdout
    return {svc: name for name, svc in (line.split() for line in out.splitlines())}


@pytest.fixture(scope="module")
def stack():
    commands = documented("compose")
    *up, down = commands
    assert up[-1] == "make compose-up", commands
    assert down == "make compose-down", commands
    env = dict(os.environ)
    port = int(env.get("COMPOSE_PORT") or 8080)
    if not port_free(port):  # (someone else's 8080: the same commands, another port)
        port = free_port()
        env["COMPOSE_PORT"] = str(port)
    if not port_free(int(env.get("RABBITMQ_MANAGEMENT_PORT") or 15672)):  # (this machine's RabbitMQ's?)
        env["RABBITMQ_MANAGEMENT_PORT"] = str(free_port())
    try:
        for command in up:
            run_documented(command, env)
        containers = _containers()
        assert set(containers) == set(SERVICES), containers
        yield Stack(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", containers)
    finally:
        run_documented(down, env)
    assert _containers() == {}
    volumes = container_cmd("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout
    assert not volumes.split(), volumes


def test_a_rest_session_through_the_containerised_envoy(stack, media):
    rest_session(stack.base_url, media["video"])


def test_a_grpc_session_through_the_containerised_envoy(stack, media):
    grpc_session(stack.grpc_addr, media["video"])


def test_the_services_run_as_non_root_on_a_read_only_root_without_compilers(stack):
    for app in APPS:
        name = stack.containers[app]
        user, read_only = container_cmd("inspect", "-f", "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}",
                                        name).stdout.split()
        assert (user, read_only) == ("10001", "true"), app
        assert container_cmd("exec", name, "id", "-u").stdout.strip() == "10001", app
    for image in ("video2mp3:latest", "video2mp3-envoy:latest"):
        found = container_cmd("run", "--rm", "--entrypoint", "sh", image, "-c",
                              "for c in gcc cc c++ g++ clang tcc as ld make; do command -v $c; done",
                              check=False)
        assert found.stdout.strip() == "", (image, found.stdout)


def _wait_state(client: GrpcClient, job_id: str, states: set[int], timeout: float,
                converting: bool = False) -> media_pb2.Job:
    """The job once in one of `states`; with `converting`, PROCESSING only
    once it reports progress (the express lane's attempt, which a long file
    leaves before decoding, reports none)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.job(job_id)
        if job.state in states and not (converting and job.state == media_pb2.JOB_STATE_PROCESSING
                                        and job.progress == 0):
            return job
        assert time.monotonic() < deadline, f"job still {media_pb2.JobState.Name(job.state)}"
        time.sleep(0.05)


def test_the_converter_container_killed_mid_job_finishes_it_once_restarted(stack, media):
    client = GrpcClient(stack.grpc_addr)
    client.sign_up_and_login()
    converter = stack.containers["converter"]
    job = client.upload(media["long"], filename="long.m4a", timeout=120)
    running = _wait_state(client, job.job_id, {media_pb2.JOB_STATE_PROCESSING, media_pb2.JOB_STATE_DONE}, 120,
                          converting=True)
    assert running.state == media_pb2.JOB_STATE_PROCESSING, "converted before it could be killed"
    container_cmd("kill", "--signal", "KILL", converter)
    killed_at = client.job(job.job_id)
    assert killed_at.state == media_pb2.JOB_STATE_PROCESSING, killed_at
    assert killed_at.progress < 100, killed_at
    # (Its restart policy may have started it again already; start is then a no-op.)
    container_cmd("start", converter)
    done = client.wait(job.job_id, timeout=240)
    assert done.state == media_pb2.JOB_STATE_DONE, done
    duration, freq, _, _ = analyse_mp3(client.download(job.job_id))
    assert abs(duration - 600) < 0.1, (duration, freq)
    assert abs(freq - 440) < 5, (duration, freq)
    client.close()


def _slow_body(stop: threading.Event, sent: list[int]):
    """An upload body that keeps coming (16 KiB per 50 ms) until `stop`."""
    piece = b"\0" * 16384
    while not stop.is_set():
        sent[0] += len(piece)
        yield piece
        time.sleep(0.05)


def test_the_gateway_restarted_fails_uploads_in_flight_cleanly_and_takes_the_next(stack, media):
    rest = RestClient(stack.base_url)
    rest.sign_up_and_login()
    grpc_client = GrpcClient(stack.grpc_addr)
    grpc_client.sign_up_and_login()
    stop = threading.Event()
    outcomes: dict[str, object] = {}
    sent = {"rest": [0], "grpc": [0]}

    def rest_upload():
        try:
            r = requests.post(f"{stack.base_url}/v1/videos", params={"filename": "inflight.mp4"},
                              data=_slow_body(stop, sent["rest"]), timeout=120,
                              headers={**rest.headers(), "Content-Type": "video/mp4"})
            outcomes["rest"] = r.status_code
        except requests.RequestException as e:
            outcomes["rest"] = e

    def grpc_messages():
        first = media_pb2.UploadVideoRequest(filename="inflight.mp4")
        first.body.content_type = "video/mp4"
        yield first
        for piece in _slow_body(stop, sent["grpc"]):
            yield media_pb2.UploadVideoRequest(body=httpbody_pb2.HttpBody(data=piece))

    def grpc_upload():
        try:
            outcomes["grpc"] = grpc_client.media.UploadVideo(grpc_messages(), metadata=grpc_client.md, timeout=120)
        except grpc.RpcError as e:
            outcomes["grpc"] = e.code()

    threads = [threading.Thread(target=f) for f in (rest_upload, grpc_upload)]
    for t in threads:
        t.start()
    # Both well under way: the gateway has their first chunks.
    deadline = time.monotonic() + 30
    while min(sent["rest"][0], sent["grpc"][0]) < 1 << 20:
        assert time.monotonic() < deadline, sent
        time.sleep(0.1)
    restarted_at = time.monotonic()
    container_cmd("restart", stack.containers["gateway"], timeout=120)
    for t in threads:
        t.join(60)
    stop.set()
    assert not any(t.is_alive() for t in threads), "an upload in flight neither finished nor failed"
    # Each failed with Envoy's answer for an upstream gone mid-stream (REST:
    # 503, or the connection closed while the client was still sending);
    # none was taken (below).
    assert outcomes["grpc"] == grpc.StatusCode.UNAVAILABLE, outcomes
    assert outcomes["rest"] == 503 or isinstance(outcomes["rest"], requests.ConnectionError), outcomes
    failed_within = time.monotonic() - restarted_at
    # The next uploads work once the gateway is back (health answers 200 again).
    deadline = time.monotonic() + 120
    while requests.get(f"{stack.base_url}/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the gateway did not come back"
        time.sleep(0.5)
    r = rest.upload(media["video"], params={"filename": "after.mp4"})
    assert r.status_code == 200, r.text
    assert rest.wait(r.json()["job_id"])["state"] == "JOB_STATE_DONE"
    check_mp3(rest.get(f"/v1/jobs/{r.json()['job_id']}/mp3").content)
    job = grpc_client.upload(media["video"], filename="after.mp4")
    assert grpc_client.wait(job.job_id).state == media_pb2.JOB_STATE_DONE
    # Neither user has a job for the uploads that failed.
    for jobs in (rest.get("/v1/jobs").json().get("jobs", []),
                 grpc_client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=grpc_client.md, timeout=10).jobs):
        names = [j["filename"] if isinstance(j, dict) else j.filename for j in jobs]
        assert names == ["after.mp4"], names
    grpc_client.close()
    print(f"in-flight uploads failed {failed_within:.1f} s after the restart began: {outcomes}")
