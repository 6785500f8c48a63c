"""The job lifecycle against the real mesh: WatchJob, DeleteJob (cancel),
ListJobs' filter and safe upload retries (request_id)."""
from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
import requests

from localmesh.processes import wait_for
from testkit.clients import GrpcClient, upload_messages
from testkit.faults import SLOW_OPTIONS, make_long_audio, user_client
from testkit.status import details
from video2mp3.media.v1 import media_pb2

DONE, FAILED = media_pb2.JOB_STATE_DONE, media_pb2.JOB_STATE_FAILED
QUEUED, PROCESSING = media_pb2.JOB_STATE_QUEUED, media_pb2.JOB_STATE_PROCESSING


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory):
    """About 6 s of conversion with SLOW_OPTIONS: long enough to watch and to cancel."""
    return make_long_audio(tmp_path_factory.mktemp("long") / "long.flac", minutes=20)


def watch(client: GrpcClient, job_id: str, timeout: float = 120) -> list[media_pb2.Job]:
    return list(client.media.WatchJob(media_pb2.WatchJobRequest(job_id=job_id),
                                      metadata=client.md, timeout=timeout))


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value




# --- WatchJob ---------------------------------------------------------------------

def test_watch_streams_progress_smoothly_to_done_then_ends(mesh, long_audio):
    client = user_client(mesh, mesh.envoy_addr)
    job = client.upload(long_audio, filename="long.flac", **SLOW_OPTIONS)
    seen = watch(client, job.job_id)
    states = [m.state for m in seen]
    progress = [m.progress for m in seen]
    assert states[-1] == DONE, seen[-1]
    assert seen[-1].progress == 100, seen[-1]
    assert progress == sorted(progress), progress          # never goes back
    assert len({p for p in progress if 0 < p < 100}) >= 3, progress  # moves, not jumps
    # One message per change, never two alike in a row.
    pairs = list(itertools.pairwise(seen))
    assert all((a.state, a.progress) != (b.state, b.progress) for a, b in pairs), progress
    assert len(seen) < 60, f"{len(seen)} messages for a ~6 s conversion"
    assert seen[-1].expire_time.seconds > seen[-1].complete_time.seconds  # AIP-214


def test_watch_of_a_final_job_is_one_message(mesh, clip):
    client = user_client(mesh)
    job = client.wait(client.upload(clip).job_id)
    assert [m.state for m in watch(client, job.job_id)] == [DONE]


def test_watch_of_a_job_that_fails_ends_with_its_error(mesh):
    client = user_client(mesh)
    job = client.upload(b"this is not a video at all" * 100, filename="notes.txt")
    seen = watch(client, job.job_id)
    assert seen[-1].state == FAILED, seen[-1]
    assert seen[-1].error, seen[-1]


def test_watch_of_another_users_job_is_not_found(mesh, clip):
    owner, other = user_client(mesh), user_client(mesh)
    job = owner.upload(clip)
    err = rpc_error(lambda: watch(other, job.job_id))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert details(err)["ErrorInfo"].reason == "JOB_NOT_FOUND"
    err = rpc_error(lambda: watch(other, ""))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details(err)["BadRequest"].field_violations] == ["job_id"]


def test_fifty_watchers_of_one_job_all_see_it_done(mesh, long_audio):
    client = user_client(mesh)
    job = client.upload(long_audio, filename="long.flac", **SLOW_OPTIONS)
    results: list = [None] * 50

    def one(i):
        try:
            results[i] = watch(client, job.job_id)
        except grpc.RpcError as e:
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    errors = [r for r in results if not isinstance(r, list)]
    assert not errors, errors[:3]
    assert all(r[-1].state == DONE and r[-1].progress == 100 for r in results)
    # The gateway stays responsive meanwhile (watchers do not take every thread).
    assert client.job(job.job_id).state == DONE


def test_rest_watch_streams_a_json_array_through_envoy(mesh, long_audio):
    client = user_client(mesh)
    job = client.upload(long_audio, filename="long.flac", **SLOW_OPTIONS)
    r = requests.get(f"{mesh.rest_base_url}/v1/jobs/{job.job_id}:watch",
                     headers={"Authorization": f"Bearer {client.token}"}, stream=True, timeout=120)
    assert r.status_code == 200, r.text
    pieces, first_at, start = [], None, time.monotonic()
    for chunk in r.iter_content(chunk_size=None):
        pieces.append(chunk.decode())
        first_at = first_at or time.monotonic() - start
    body = "".join(pieces)
    assert body.startswith("[{"), body[:200]
    assert body.endswith("}]"), body[:200]
    assert pieces[0].startswith("[{")
    assert len(pieces) > 2
    assert first_at is not None
    assert first_at < 2, first_at                                # the current state at once
    jobs = json.loads(body)
    assert jobs[-1]["state"] == "JOB_STATE_DONE"
    assert jobs[-1]["progress"] == 100


def test_watch_ends_with_not_found_when_the_job_is_deleted(mesh, long_audio):
    client = user_client(mesh)
    job = client.upload(long_audio, filename="long.flac", **SLOW_OPTIONS)
    stream = client.media.WatchJob(media_pb2.WatchJobRequest(job_id=job.job_id), metadata=client.md,
                                   timeout=60)
    assert next(stream).job_id == job.job_id
    client.media.DeleteJob(media_pb2.DeleteJobRequest(job_id=job.job_id), metadata=client.md, timeout=10)
    err = rpc_error(lambda: list(stream))
    assert err.code() == grpc.StatusCode.NOT_FOUND, err


# --- DeleteJob --------------------------------------------------------------------

def delete(client: GrpcClient, job_id: str) -> None:
    client.media.DeleteJob(media_pb2.DeleteJobRequest(job_id=job_id), metadata=client.md, timeout=10)


def assert_nothing_left(store, doc: dict) -> None:
    """What DeleteJob promises. A worker that had taken the job may have closed
    its MP3 just before the delete: it notices at its next lease renewal
    (~0.5 s) and removes it, so the MP3s are looked at until then."""
    fids = [f for f in [doc.get("mp3_fid"), doc.get("current_mp3_fid"), *doc.get("pending_mp3_fids", [])] if f]
    with contextlib.suppress(TimeoutError):
        wait_for("the converter to remove its MP3",
                 lambda: store.db["mp3s.files"].count_documents({"metadata.job_id": doc["_id"]}) == 0,
                 timeout=10, interval=0.1)
    assert store.jobs.count_documents({"_id": doc["_id"]}) == 0
    assert store.db["videos.files"].count_documents({"_id": doc["video_fid"]}) == 0
    assert store.db["videos.chunks"].count_documents({"files_id": doc["video_fid"]}) == 0
    assert store.db["mp3s.files"].count_documents({"_id": {"$in": fids}}) == 0
    assert store.db["mp3s.chunks"].count_documents({"files_id": {"$in": fids}}) == 0
    assert store.db["mp3s.files"].count_documents({"metadata.job_id": doc["_id"]}) == 0


def test_delete_a_done_job_removes_it_and_its_files_and_twice_is_not_found(mesh, store, clip):
    client, other = user_client(mesh), user_client(mesh)
    job = client.wait(client.upload(clip).job_id)
    doc = store.job(job.job_id)
    err = rpc_error(lambda: delete(other, job.job_id))             # not yours: NOT_FOUND
    assert err.code() == grpc.StatusCode.NOT_FOUND
    delete(client, job.job_id)
    assert_nothing_left(store, doc)
    for call in (lambda: delete(client, job.job_id), lambda: client.job(job.job_id)):
        err = rpc_error(call)                                        # AIP-135: gone
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert details(err)["ErrorInfo"].reason == "JOB_NOT_FOUND"


def test_delete_during_conversion_stops_it_and_the_worker_goes_on(mesh, store, long_audio, clip):
    client = user_client(mesh)
    job = client.upload(long_audio, filename="long.flac", **SLOW_OPTIONS)
    doc = store.wait_job(job.job_id, lambda j: j["state"] == "PROCESSING" and j["progress"] > 5,
                         "to be converting")
    t0 = time.monotonic()
    delete(client, job.job_id)
    attempt = doc["current_mp3_fid"]
    # The converter notices at its next progress write (every 0.5 s) and removes what it wrote.
    wait_for("the cancelled attempt's MP3 chunks to go",
             lambda: store.chunks(attempt) == 0 and
             store.db["mp3s.files"].count_documents({"metadata.job_id": job.job_id}) == 0, timeout=5)
    wait_for("the converter to log the cancellation",
             lambda: f"job {job.job_id} was deleted" in mesh.log_tail("converter", 200), timeout=5)
    assert time.monotonic() - t0 < 3
    assert_nothing_left(store, doc)
    time.sleep(1)  # nothing comes back later (no MP3 written after the delete)
    assert store.db["mp3s.chunks"].count_documents({"files_id": attempt}) == 0
    # The worker takes the next job.
    nxt = client.wait(client.upload(clip).job_id, timeout=60)
    assert nxt.state == DONE, nxt.error


def test_a_deleted_queued_job_never_starts(mesh_factory, store, clip):
    stack = mesh_factory(services=("auth", "gateway"))  # no converter yet
    client = user_client(stack)
    job = client.upload(clip)
    doc = store.job(job.job_id)
    delete(client, job.job_id)
    assert_nothing_left(store, doc)
    stack.start_service("converter")
    wait_for("the converter to ack the deleted job's task",
             lambda: f"job {job.job_id} no longer exists" in stack.log_tail("converter", 200), timeout=30)
    assert store.db["mp3s.files"].count_documents({"metadata.job_id": job.job_id}) == 0


def test_delete_during_an_upload_is_not_found_and_the_upload_completes(mesh, store, clip):
    """A job exists once its upload has ended (the upload returns its id), so
    there is nothing to delete while it streams: DeleteJob says NOT_FOUND and
    the upload goes on; the job it returns can then be deleted."""
    client = user_client(mesh)
    data = Path(clip).read_bytes()
    streaming, go_on = threading.Event(), threading.Event()

    def slow():
        for i, m in enumerate(upload_messages(data, "clip.mp4")):
            yield m
            if i == 0:
                streaming.set()
                go_on.wait(10)

    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "job", client.media.UploadVideo(slow(), metadata=client.md, timeout=60)))
    t.start()
    assert streaming.wait(10)
    listed = client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=client.md, timeout=10)
    assert list(listed.jobs) == []
    err = rpc_error(lambda: delete(client, uuid.uuid4().hex))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    go_on.set()
    t.join(30)
    job = out["job"]
    doc = store.job(job.job_id)
    delete(client, job.job_id)
    assert_nothing_left(store, doc)


# --- ListJobs ---------------------------------------------------------------------

def list_jobs(client, **kw) -> media_pb2.ListJobsResponse:
    return client.media.ListJobs(media_pb2.ListJobsRequest(**kw), metadata=client.md, timeout=10)


def test_list_filters_on_state_and_pages_newest_first(mesh, clip):
    client = user_client(mesh)
    done = [client.wait(client.upload(clip).job_id).job_id for _ in range(3)]
    failed = client.wait(client.upload(b"\x00" * 3000, filename="zeros.bin").job_id)
    assert failed.state == FAILED
    for text in ("state = JOB_STATE_DONE", "state=JOB_STATE_DONE", "  state =JOB_STATE_DONE "):
        assert [j.job_id for j in list_jobs(client, filter=text).jobs] == done[::-1], text
    assert [j.job_id for j in list_jobs(client, filter="state = JOB_STATE_FAILED").jobs] == [failed.job_id]
    both = list_jobs(client, filter="state = JOB_STATE_FAILED OR state = JOB_STATE_DONE")
    assert [j.job_id for j in both.jobs] == [failed.job_id, *done[::-1]]
    assert list_jobs(client, filter="state = JOB_STATE_QUEUED").jobs == []
    # Paging keeps the filter; a token used with another filter is refused.
    page = list_jobs(client, filter="state = JOB_STATE_DONE", page_size=2)
    assert [j.job_id for j in page.jobs] == done[:0:-1]
    assert page.next_page_token
    rest = list_jobs(client, filter="state = JOB_STATE_DONE", page_size=2, page_token=page.next_page_token)
    assert [j.job_id for j in rest.jobs] == done[:1]
    assert not rest.next_page_token
    err = rpc_error(lambda: list_jobs(client, page_token=page.next_page_token))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err)["ErrorInfo"].reason == "INVALID_PAGE"


@pytest.mark.parametrize("text", ["state = DONE", "state != JOB_STATE_DONE", "progress = 100",
                                  "state = JOB_STATE_DONE AND state = JOB_STATE_FAILED",
                                  "state = JOB_STATE_DONE OR", "x" * 2000])
def test_list_refuses_other_filters_naming_the_field(mesh, text):
    client = user_client(mesh)
    err = rpc_error(lambda: list_jobs(client, filter=text))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    d = details(err)
    assert d["ErrorInfo"].reason == "INVALID_FILTER"
    assert [v.field for v in d["BadRequest"].field_violations] == ["filter"]
    assert "state = JOB_STATE_DONE" in err.details()  # says what would work


def test_list_page_size_bounds(mesh, clip):
    client = user_client(mesh)
    err = rpc_error(lambda: list_jobs(client, page_size=-1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details(err)["BadRequest"].field_violations] == ["page_size"]
    assert list_jobs(client, page_size=100_000).jobs == []  # capped at 1000, not refused


# --- request_id -----------------------------------------------------------------------

def video_count(store, user_id_of_job) -> int:
    return store.db["videos.files"].count_documents({"metadata.user_id": user_id_of_job})


def test_same_request_id_gives_the_first_job_and_stores_one_video(mesh_factory, store, clip):
    stack = mesh_factory(services=("auth", "gateway"))  # nothing converts: the video stays
    client, other = user_client(stack), user_client(stack)
    rid = str(uuid.uuid4())
    first = client.upload(clip, request_id=rid)
    again = client.upload(clip, request_id=rid.upper())  # the same UUID
    assert again.job_id == first.job_id
    user_id = store.job(first.job_id)["user_id"]
    assert store.jobs.count_documents({"user_id": user_id}) == 1
    assert video_count(store, user_id) == 1
    # Another caller's same request_id is its own request.
    theirs = other.upload(clip, request_id=rid)
    assert theirs.job_id != first.job_id
    # Without a request_id, every upload is new.
    assert client.upload(clip).job_id != first.job_id
    # After a delete, the request_id makes a new job.
    delete(client, first.job_id)
    assert client.upload(clip, request_id=rid).job_id != first.job_id


def test_a_retry_while_the_first_still_streams_waits_and_gets_the_same_job(mesh_factory, store, clip):
    stack = mesh_factory(services=("auth", "gateway"))
    client = user_client(stack)
    rid = str(uuid.uuid4())
    data = Path(clip).read_bytes()
    streaming, go_on = threading.Event(), threading.Event()

    def slow():
        for i, m in enumerate(upload_messages(data, "clip.mp4", request_id=rid)):
            yield m
            if i == 0:
                streaming.set()
                go_on.wait(20)

    out: dict = {}

    def run(name, messages):
        try:
            out[name] = client.media.UploadVideo(messages, metadata=client.md, timeout=60)
        except grpc.RpcError as e:
            out[name] = e

    a = threading.Thread(target=run, args=("first", slow()))
    a.start()
    assert streaming.wait(10)
    # The client having sent its first message is not the server having read
    # it: start the retry only once the first upload holds the reservation.
    wait_for("the first upload to reserve its request_id",
             lambda: store.db["requests"].count_documents({"request_id": rid}) == 1, timeout=10)
    b = threading.Thread(target=run, args=("retry", upload_messages(data, "clip.mp4", request_id=rid)))
    b.start()
    time.sleep(1.5)
    assert "retry" not in out, out  # waits for the first
    go_on.set()
    a.join(30)
    b.join(30)
    assert isinstance(out["first"], media_pb2.Job), out["first"]
    assert isinstance(out["retry"], media_pb2.Job), out["retry"]
    assert out["retry"].job_id == out["first"].job_id
    user_id = store.job(out["first"].job_id)["user_id"]
    assert video_count(store, user_id) == 1
    assert store.db["requests"].count_documents({"user_id": user_id}) == 0  # released


def test_a_retry_after_a_failed_first_upload_proceeds(mesh_factory, store, clip):
    stack = mesh_factory(services=("auth", "gateway"))
    client = user_client(stack)
    rid = str(uuid.uuid4())
    data = Path(clip).read_bytes()

    def broken():
        yield from list(upload_messages(data, "clip.mp4", request_id=rid))[:2]
        raise RuntimeError("the client breaks off")  # grpc cancels the call

    with pytest.raises(grpc.RpcError):
        client.media.UploadVideo(broken(), metadata=client.md, timeout=30)
    job = client.upload(clip, request_id=rid)
    user_id = store.job(job.job_id)["user_id"]
    assert store.jobs.count_documents({"user_id": user_id}) == 1
    wait_for("one video", lambda: video_count(store, user_id) == 1, timeout=10)


@pytest.mark.parametrize("rid", ["not-a-uuid", "123", "{123e4567-e89b-42d3-a456-426614174000}", "é" * 40])
def test_a_malformed_request_id_is_invalid_argument(mesh, clip, rid):
    client = user_client(mesh)
    err = rpc_error(lambda: client.upload(clip, request_id=rid))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    d = details(err)
    assert d["ErrorInfo"].reason == "INVALID_REQUEST_ID"
    assert [v.field for v in d["BadRequest"].field_violations] == ["request_id"]


def test_the_video_is_deleted_once_the_job_is_done(mesh, store, clip):
    """VIDEO_RETENTION defaults to 0: the converter deletes the video as it finishes."""
    client = user_client(mesh)
    job = client.upload(clip)
    video = store.job(job.job_id)["video_fid"]
    assert client.wait(job.job_id).state == DONE
    doc = store.wait_job(job.job_id, lambda j: j["video_fid"] is None, "to drop its video", timeout=10)
    assert store.db["videos.files"].count_documents({"_id": video}) == 0
    assert store.db["videos.chunks"].count_documents({"files_id": video}) == 0
    assert store.chunks(doc["mp3_fid"]) > 0
    assert client.download(job.job_id)
