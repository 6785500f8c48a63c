"""Converter crashes and duplicate deliveries (issue #4, "Converter crash" and
the duplicate half of "Publish safety"), against real RabbitMQ and SecantusDB.

Each test runs its own mesh (mesh_factory: own queue, one worker unless said
otherwise, a short job lease so a redelivery need not wait 15 s for a dead
worker's lease) and SIGKILLs worker processes, never the shared servers.
What must hold every time: the job ends DONE exactly once with exactly one
MP3 in GridFS bucket `mp3s`, or FAILED with a reason; nothing half-written
is left behind.
"""
from __future__ import annotations

import time

import pika
import pytest
from bson import ObjectId

from localmesh.processes import wait_for
from testkit.faults import (
    SLOW_OPTIONS,
    Store,
    kill_worker,
    make_long_audio,
    user_client,
    worker_pids,
)
from testkit.media import analyse_mp3
from testkit.testbed import publish_raw, rabbit_connection
from video2mp3.converter.policy import REVIVED_HEADER
from video2mp3.domain import jobs
from video2mp3.domain.queue import MAX_DELIVERIES, dead_letter_queue, encode_task
from video2mp3.media.v1 import media_pb2

SERVICES = ("auth", "gateway", "converter")
LEASE_S = 2


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory):
    """10 minutes of tone: several seconds of conversion with SLOW_OPTIONS."""
    return make_long_audio(tmp_path_factory.mktemp("long") / "long.flac", minutes=10)


def converting(job: dict, attempt: int | None = None) -> bool:
    """The job is PROCESSING and its current attempt is well under way."""
    return (job["state"] == "PROCESSING" and 0 < job["progress"] < 80
            and (attempt is None or job["attempts"] == attempt))


def crash_mid_write(stack, store: Store, job: dict) -> tuple[ObjectId, int]:
    """SIGKILL the (only) worker while it converts `job`, once the attempt's MP3
    has chunks in GridFS (they are stored as they fill), so the kill really
    leaves a half-written file. Returns (the attempt's MP3 id, the killed worker's pid)."""
    fid = job["current_mp3_fid"]
    deadline = time.monotonic() + 60
    while store.chunks(fid) == 0:
        assert time.monotonic() < deadline, "the attempt wrote no MP3 chunk in 60 s"
        time.sleep(0.05)
    [worker] = worker_pids(stack)
    kill_worker(worker)
    return fid, worker


def test_worker_killed_mid_conversion_is_redelivered_and_converts_once(
        mesh_factory, store, long_audio):
    stack = mesh_factory(services=SERVICES, CONVERTER_WORKERS=1, CONVERTER_LEASE_S=LEASE_S)
    orphans_before = store.orphan_chunk_files()
    client = user_client(stack)
    job_id = client.upload(long_audio, filename="long.flac", **SLOW_OPTIONS).job_id

    doc = store.wait_job(job_id, converting, "to be converting")
    half_written, worker = crash_mid_write(stack, store, doc)

    done = client.wait(job_id, timeout=120)
    assert done.state == media_pb2.JOB_STATE_DONE, done.error
    job = store.assert_one_mp3(job_id)
    assert job["attempts"] == 2  # redelivered once, converted by the new worker
    assert job["mp3_fid"] != half_written
    store.assert_attempt_gone(half_written)
    assert store.orphan_chunk_files() <= orphans_before
    assert len(worker_pids(stack)) == 1
    assert worker not in worker_pids(stack)

    # The MP3 is whole: as long as the source.
    duration, freq, rate, channels = analyse_mp3(client.download(job_id))
    assert abs(duration - 600) < 0.2
    assert abs(freq - 440) < 5
    assert (rate, channels) == (48000, 2)


def test_a_message_that_kills_its_worker_every_time_is_dead_lettered(
        mesh_factory, store, long_audio, clip):
    """The killer job ends FAILED with a reason after MAX_DELIVERIES attempts,
    its attempts' half-written MP3s are gone, and the converter goes on."""
    stack = mesh_factory(services=SERVICES, CONVERTER_WORKERS=1, CONVERTER_LEASE_S=LEASE_S)
    client = user_client(stack)
    job_id = client.upload(long_audio, filename="killer.flac", **SLOW_OPTIONS).job_id

    half_written = []
    for attempt in range(1, MAX_DELIVERIES + 1):
        doc = store.wait_job(job_id, lambda j, n=attempt: converting(j, n),
                             f"to be converting (attempt {attempt})")
        half_written.append(crash_mid_write(stack, store, doc)[0])

    failed = client.wait(job_id, timeout=60)
    assert failed.state == media_pb2.JOB_STATE_FAILED
    assert "stopped unexpectedly" in failed.error
    assert "corrupt or unsupported" in failed.error
    job = store.job(job_id)
    assert job["attempts"] == MAX_DELIVERIES  # never a fourth delivery
    assert store.mp3_files(job_id) == []
    wait_for("the dead-lettered job's half-written MP3s to be deleted",
               lambda: store.job(job_id)["pending_mp3_fids"] == [], timeout=20)
    for fid in half_written:
        store.assert_attempt_gone(fid)

    # Other jobs go on, on the replacement worker.
    other = client.upload(clip, filename="next.mp4")
    assert client.wait(other.job_id, timeout=60).state == media_pb2.JOB_STATE_DONE
    store.assert_one_mp3(other.job_id)
    assert store.job(job_id)["state"] == "FAILED"  # and stays so


def test_a_task_published_twice_more_is_converted_once(
        mesh_factory, store, long_audio, rabbitmq_server):
    """The gateway's publish plus two copies by hand, taken by two workers at
    once: one conversion, one MP3; the copies are acked as duplicates."""
    # The default lease: the second worker waits for the first, never takes over.
    stack = mesh_factory(services=SERVICES, CONVERTER_WORKERS=2)
    client = user_client(stack)
    job_id = client.upload(long_audio, filename="twice.flac", **SLOW_OPTIONS).job_id
    task = encode_task(jobs.task_for(jobs.Job.from_doc(store.job(job_id))))  # what the gateway published
    publish_raw(rabbitmq_server, stack.env["QUEUE_NAME"], [task, task])

    assert client.wait(job_id, timeout=120).state == media_pb2.JOB_STATE_DONE
    wait_for("both extra copies to be acked as duplicates",
               lambda: stack.log_tail("converter", 400).count(
                   f"job {job_id} already DONE; duplicate task acked") == 2, timeout=30)
    job = store.assert_one_mp3(job_id)
    assert job["attempts"] == 1


def _divert_to_dead_letters(rabbit_env: dict, queue: str, headers: dict | None = None) -> bytes:
    """Take the one task off `queue` and put it on `<queue>.dead`, as the
    broker does after MAX_DELIVERIES deliveries that were never acked."""
    with rabbit_connection(rabbit_env) as conn:
        ch = conn.channel()
        method, _props, body = ch.basic_get(queue)
        assert method is not None, "the gateway published no task"
        ch.basic_publish("", dead_letter_queue(queue), body,
                         pika.BasicProperties(delivery_mode=2, headers=headers))
        ch.basic_ack(method.delivery_tag)
    return body


@pytest.mark.parametrize(("revived", "final_state"), [(0, "DONE"), (3, "FAILED")])
def test_a_dead_letter_never_attempted_is_queued_again_a_bounded_number_of_times(
        mesh_factory, store, clip, rabbitmq_server, revived, final_state):
    """Deliveries lost to connection cuts (no conversion ever started) do not
    fail the job: its dead letter is queued again, at most MAX_REVIVALS times."""
    stack = mesh_factory(services=("auth", "gateway"), CONVERTER_LEASE_S=LEASE_S)
    client = user_client(stack)
    job_id = client.upload(clip, filename="cut.mp4").job_id
    wait_for("the task to be published", lambda: store.job(job_id)["published"], timeout=30)
    _divert_to_dead_letters(rabbitmq_server, stack.env["QUEUE_NAME"],
                            {REVIVED_HEADER: revived} if revived else None)

    stack.start_service("converter")
    job = store.wait_final(job_id)
    assert job["state"] == final_state, job
    if final_state == "DONE":
        store.assert_one_mp3(job_id)
    else:
        assert job["attempts"] == 0
        assert "stopped unexpectedly" in job["error"]
