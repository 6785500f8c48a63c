"""Graceful shutdown (issue #4): SIGTERM makes a service stop taking new work,
finish or hand back what it is doing within GRACE_SECONDS, and exit 0.

`make run`'s Ctrl-C takes the same path: localmesh/__main__.py turns SIGINT into
Stack.close(), which SIGTERMs every child (each in its own process group, so
the terminal's SIGINT never reaches them directly) and SIGKILLs only what is
still running GRACE_SECONDS + 5 s later.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid

import grpc
import jwt
import pytest

import testkit
from localmesh.processes import wait_for
from testkit import testbed
from testkit.clients import CHUNK, upload_messages
from testkit.faults import SLOW_OPTIONS, make_long_audio, user_client
from video2mp3.domain.queue import MAX_DELIVERIES
from video2mp3.media.v1 import media_pb2, media_pb2_grpc

SERVICES = ("auth", "gateway", "converter")
ROOT = testkit.ROOT


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory):
    """20 minutes: seconds of conversion left when a SIGTERM comes at half-way."""
    return make_long_audio(tmp_path_factory.mktemp("long") / "long.flac", minutes=20)


def _converting(job: dict) -> bool:
    """Under way, with at least half of the work still ahead."""
    return job["state"] == "PROCESSING" and 0 < job["progress"] < 50


def test_converter_sigterm_hands_back_a_job_it_cannot_finish_within_the_grace(
        mesh_factory, store, long_audio):
    """GRACE_SECONDS=0.5 is far shorter than the job: the worker stops it,
    deletes its partial MP3, hands the job back and exits. Handing back never
    counts against the queue's delivery limit, so a job caught by more restarts
    in a row than MAX_DELIVERIES is still converted (once) in the end."""
    stack = mesh_factory(services=SERVICES, CONVERTER_WORKERS=1, GRACE_SECONDS=0.5)
    client = user_client(stack)
    job_id = client.upload(long_audio, filename="long.flac", **SLOW_OPTIONS).job_id

    for attempt in range(1, MAX_DELIVERIES + 1):
        fid = store.wait_job(job_id, lambda j, n=attempt: _converting(j) and j["attempts"] == n,
                             f"to be converting (attempt {attempt})")["current_mp3_fid"]
        # 0: the supervisor exited by itself (Child.stop SIGKILLs it after the
        # deadline); no "did not stop in time": its worker did too, within the grace.
        assert stack.stop_service("converter", deadline=0.5 + 10) == 0
        assert "did not stop in time" not in stack.log_tail("converter")
        job = store.job(job_id)
        assert job["state"] == "QUEUED", job
        assert job["attempts"] == attempt, job
        assert job["pending_mp3_fids"] == []
        store.assert_attempt_gone(fid)
        stack.start_service("converter")

    assert client.wait(job_id, timeout=120).state == media_pb2.JOB_STATE_DONE, store.job(job_id)["error"]
    assert store.assert_one_mp3(job_id)["attempts"] == MAX_DELIVERIES + 1


def test_converter_sigterm_finishes_the_job_in_hand_and_takes_no_new_one(
        mesh_factory, store, long_audio, clip):
    """With time enough in the grace period the in-flight job ends DONE before
    the converter exits, and a job queued after the SIGTERM is left for the
    next converter."""
    stack = mesh_factory(services=SERVICES, CONVERTER_WORKERS=1, GRACE_SECONDS=60)
    client = user_client(stack)
    job_id = client.upload(long_audio, filename="long.flac", **SLOW_OPTIONS).job_id
    store.wait_job(job_id, _converting, "to be converting")

    stack.child("converter").terminate()
    wait_for("the converter to take the SIGTERM",
               lambda: "stopping workers" in stack.log_tail("converter"), timeout=10)
    later = client.upload(clip, filename="later.mp4").job_id
    assert stack.child("converter").wait(60 + 5) == 0
    store.assert_one_mp3(job_id)
    assert store.job(job_id)["attempts"] == 1
    assert store.job(later)["state"] == "QUEUED"
    assert store.job(later)["attempts"] == 0

    stack.start_service("converter")
    assert client.wait(later, timeout=60).state == media_pb2.JOB_STATE_DONE
    store.assert_one_mp3(later)


def _upload_stream(data: bytes, filename: str, sent_one: threading.Event, pause: float = 0.0,
                   stuck: threading.Event | None = None):
    """An upload that sends a message every `pause` seconds; with `stuck`, it
    sends one and then waits for that event (a client that hangs). `sent_one`
    is set once the first message has gone out."""
    for i, msg in enumerate(upload_messages(data, filename)):
        if i:
            sent_one.set()
            if stuck is not None:
                stuck.wait()
                return
            time.sleep(pause)
        yield msg


def test_gateway_sigterm_refuses_new_rpcs_finishes_short_ones_and_exits(mesh_factory, store):
    """GRACE_SECONDS=5: an upload that ends within it completes (job recorded),
    one that hangs is cut off when it ends and leaves nothing, new RPCs are
    refused at once, and the gateway exits 0."""
    stack = mesh_factory(services=("auth", "gateway"), GRACE_SECONDS=5)
    client = user_client(stack)
    user_id = jwt.decode(client.token, options={"verify_signature": False})["sub"]
    data = bytes(8 * CHUNK)  # the gateway stores any bytes; no converter runs here
    orphans_before = store.orphan_chunk_files("videos")

    results: dict[str, object] = {}
    started = {"slow": threading.Event(), "stuck": threading.Event()}
    release = threading.Event()

    def run(name, requests):
        try:
            results[name] = client.media.UploadVideo(requests, metadata=client.md, timeout=30)
        except grpc.RpcError as e:
            results[name] = e

    threads = [
        # About 1.75 s of sending: ends within the grace period.
        threading.Thread(target=run, args=("slow", _upload_stream(data, "slow.mp4", started["slow"], 0.25))),
        # Never ends: cut off when the grace period is over.
        threading.Thread(target=run, args=("stuck", _upload_stream(data, "stuck.mp4", started["stuck"],
                                                                    stuck=release))),
    ]
    for t in threads:
        t.start()
    for name, event in started.items():
        assert event.wait(10), f"the {name} upload did not start"
    time.sleep(0.2)  # their first messages cross the loopback

    stack.child("gateway").terminate()
    fresh = grpc.insecure_channel(stack.media_addr)
    stub = media_pb2_grpc.MediaServiceStub(fresh)

    def refused() -> bool:
        try:
            stub.GetJob(media_pb2.GetJobRequest(job_id="x"), metadata=client.md, timeout=2)
        except grpc.RpcError as e:
            return e.code() == grpc.StatusCode.UNAVAILABLE
        return False

    try:
        wait_for("the stopping gateway to refuse new RPCs", refused, timeout=5)
    finally:
        fresh.close()

    assert stack.child("gateway").wait(5 + 5) == 0
    release.set()
    for t in threads:
        t.join(10)
    slow = results["slow"]
    assert isinstance(slow, media_pb2.Job), slow
    assert store.job(slow.job_id)["state"] == "QUEUED"
    stuck = results["stuck"]
    assert isinstance(stuck, grpc.RpcError), stuck
    assert stuck.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), stuck
    # The cut-off upload left nothing: one job and one video, the slow one's.
    assert store.jobs.count_documents({"user_id": user_id}) == 1
    videos = list(store.db["videos.files"].find({"metadata.user_id": user_id}))
    assert [v["_id"] for v in videos] == [store.job(slow.job_id)["video_fid"]]
    assert store.orphan_chunk_files("videos") <= orphans_before


def test_make_run_ctrl_c_stops_every_service_with_sigterm(mesh_env, rabbitmq_server, tmp_path):
    """`python -m localmesh` (make run) on its own ports and queue, then SIGINT as a
    terminal's Ctrl-C sends it: every service logs the SIGTERM it got, nothing
    needs a SIGKILL, and make run exits 0."""
    env = testbed.fresh_ports(mesh_env)
    env.update(QUEUE_NAME=f"{mesh_env['QUEUE_NAME']}_run_{uuid.uuid4().hex[:6]}", GRACE_SECONDS="3")
    out_path = tmp_path / "make-run.log"
    with open(out_path, "w") as out:
        run = subprocess.Popen([sys.executable, "-m", "localmesh"], env=env, cwd=ROOT,
                               stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for("make run to be up", lambda: "video2mp3 is up." in out_path.read_text(),
                   timeout=90, interval=0.2)
        run.send_signal(signal.SIGINT)
        assert run.wait(3 + 5 + 10) == 0, out_path.read_text()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        testbed.delete_queues(rabbitmq_server, env["QUEUE_NAME"])
    log = out_path.read_text()
    for name in ("auth", "gateway", "converter", "envoy"):  # make run says where the metrics are
        assert f"metrics  {name}" in log, log
    for service, line in (("auth", "got SIGTERM, stopping"), ("gateway", "got SIGTERM, stopping"),
                          ("converter", "got SIGTERM, stopping workers")):
        assert any(line in row for row in log.splitlines() if row.startswith(f"{service:<10}|")), \
            f"{service} did not get a SIGTERM:\n{log}"
    assert "sending SIGKILL" not in log, log
    assert "did not stop in time" not in log, log
