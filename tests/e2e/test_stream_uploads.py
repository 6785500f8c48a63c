"""Convert while uploading (issue 14): a streamable upload is converted while it
arrives, hidden from its owner until its upload is answered, and every
guarantee holds: nothing is kept when it fails, a dead gateway or converter
costs nothing but time, the MP3 is the one the normal path makes.

Each test holds its upload open half-way (a gated client stream), so what
happens "before the upload ended" is observed, never guessed from timing.
"""
from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import grpc
import pytest
from google.api import httpbody_pb2

from localmesh.processes import wait_for
from testkit.faults import kill_worker, user_client, worker_pids
from testkit.media import decode_audio, ebur128, make_media, mp3_bytes
from testkit.prom import scrape
from video2mp3.media.v1 import media_pb2

SERVICES = ("auth", "gateway", "converter")
PIECE = 64 * 1024
NOT_FOUND = grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def faststart(tmp_path_factory):
    """60 s of tone in a faststart MP4 (moov first): streamable."""
    return make_media(tmp_path_factory.mktemp("stream") / "fast.mp4", video_codec="h264",
                      duration=60.0, faststart=True, video_noise=30)


@pytest.fixture(scope="module")
def moov_at_end(tmp_path_factory):
    """The same, with FFmpeg's default layout (moov after mdat): not streamable."""
    return make_media(tmp_path_factory.mktemp("stream") / "slow.mp4", video_codec="h264",
                      duration=60.0, video_noise=30)


@pytest.fixture(scope="module")
def stream_mesh(module_mesh_factory):
    # Overlap pinned on: every conversion here encodes on every core, so its
    # MP3 is normal_mp3()'s byte for byte (converter/split_encode.py).
    return module_mesh_factory(services=SERVICES, CONVERTER_WORKERS=1, CONVERTER_OVERLAP="on")


class GatedUpload:
    """A client-streamed upload of `path` that sends `hold_at` bytes, then waits
    for `gate` (or, if `cancelled`, never sends the rest)."""

    def __init__(self, client, path, filename: str, hold_at: float = 0.5, data: bytes | None = None,
                 content_type: str = "video/mp4", **options):
        self.client = client
        self.options = options
        self.data = Path(path).read_bytes() if data is None else data
        self.filename = filename
        self.content_type = content_type
        self.hold_at = int(len(self.data) * hold_at)
        self.gate = threading.Event()
        self.sent = 0
        self.call = client.media.UploadVideo.future(self._messages(), metadata=client.md, timeout=120)

    def _messages(self):
        first = media_pb2.UploadVideoRequest(filename=self.filename, **self.options)
        first.body.content_type = self.content_type
        first.body.data = self.data[:PIECE]
        self.sent = PIECE
        yield first
        while self.sent < len(self.data):
            if self.sent >= self.hold_at:
                self.gate.wait(90)
            yield media_pb2.UploadVideoRequest(
                body=httpbody_pb2.HttpBody(data=self.data[self.sent:self.sent + PIECE]))
            self.sent += PIECE

    def finish(self) -> media_pb2.Job:
        self.gate.set()
        return self.call.result(timeout=120)


def hidden_job(store, user_id: str, cond=lambda j: True, what: str = "") -> dict:
    """Wait for the user's one job in MongoDB (hidden or not) to meet `cond`."""
    found: dict = {}

    def check():
        doc = store.jobs.find_one({"user_id": user_id})
        found.clear()
        found.update(doc or {})
        return doc is not None and cond(doc)

    try:
        wait_for(f"the job {what}", check, timeout=60, interval=0.05)
    except TimeoutError as e:
        keys = ("state", "progress", "attempts", "uploading", "current_mp3_fid")
        raise AssertionError(f"{e}; last seen: {({k: found.get(k) for k in keys})}") from None
    return found


def user_id_of(client) -> str:
    import jwt
    return jwt.decode(client.token, options={"verify_signature": False})["sub"]


def normal_mp3(path, filename: str) -> bytes:
    """What the normal path makes of the complete file (header patched in), as
    the meshes here convert it (CONVERTER_OVERLAP=on): one LAME encoder per
    core, on segments (converter/split_encode.py). The output depends on the
    audio and those segments only, not on how or when the bytes arrived."""
    return mp3_bytes(io.BytesIO(Path(path).read_bytes()), filename=filename,
                     overlap=True, encoders=os.cpu_count() or 1)


def assert_not_found(call) -> None:
    def read_all():
        result = call()
        if hasattr(result, "__iter__"):
            list(result)

    with pytest.raises(grpc.RpcError) as e:
        read_all()
    assert e.value.code() == NOT_FOUND, e.value.details()


def converting(doc: dict) -> bool:
    return doc["state"] == "PROCESSING" and doc["progress"] > 0


def held_mid_conversion(mesh, store, path, filename: str):
    """A new user's upload of `path`, held half-way once its MP3 is being
    written: (the upload, the user id, the hidden job's document)."""
    client = user_client(mesh)
    uid = user_id_of(client)
    up = GatedUpload(client, path, filename)
    doc = hidden_job(store, uid, lambda j: converting(j) and store.chunks(j["current_mp3_fid"]) > 0,
                     "writing its MP3 while uploading")
    return up, uid, doc


# ---------------------------------------------------------------- the path

def test_a_streamable_upload_is_converted_before_it_ends_and_hidden_until_then(
        stream_mesh, store, faststart):
    client = user_client(stream_mesh)
    uid = user_id_of(client)
    up = GatedUpload(client, faststart, "fast.mp4")
    # Half the file is in, the client holds the rest: the converter is at work.
    doc = hidden_job(store, uid, lambda j: j.get("uploading") and converting(j), "converting while uploading")
    assert not up.call.done()
    assert up.sent < len(up.data)
    job_id = doc["_id"]

    # Hidden from its owner exactly like a job that does not exist.
    req = media_pb2.GetJobRequest(job_id=job_id)
    assert_not_found(lambda: client.media.GetJob(req, metadata=client.md, timeout=10))
    assert_not_found(lambda: client.media.WatchJob(media_pb2.WatchJobRequest(job_id=job_id),
                                                   metadata=client.md, timeout=10))
    assert_not_found(lambda: client.media.DeleteJob(media_pb2.DeleteJobRequest(job_id=job_id),
                                                    metadata=client.md, timeout=10))
    listed = client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=client.md, timeout=10)
    assert list(listed.jobs) == []

    job = up.finish()
    # The answer shows work done before the upload ended: it cannot be faked.
    assert job.job_id == job_id
    assert job.state in (media_pb2.JOB_STATE_PROCESSING, media_pb2.JOB_STATE_DONE)
    assert job.progress > 0
    assert job.video_size_bytes == len(up.data)
    assert job.filename == "fast.mp4"
    assert client.job(job_id).job_id == job_id  # visible from now on

    done = client.wait(job_id)
    assert done.state == media_pb2.JOB_STATE_DONE, done.error
    doc = store.assert_one_mp3(job_id)
    assert doc["attempts"] == 1
    assert "uploading" not in doc
    assert client.download(job_id) == normal_mp3(faststart, "fast.mp4")


def test_a_trimmed_normalised_upload_is_measured_while_it_arrives(stream_mesh, store, faststart):
    """The loudness pass reads the upload as it grows (no seek: the start is
    decoded to), the encode pass reads it again once complete; the MP3 is
    the trimmed range, sample-exact, at the loudness asked for."""
    client = user_client(stream_mesh)
    uid = user_id_of(client)
    up = GatedUpload(client, faststart, "fast.mp4", start_ms=5000, end_ms=50_000, loudness_lufs=-16)
    # Started while uploading; its progress may still read 0: the first half
    # of this file holds little audio, and the measuring pass is 30 % of the bar.
    doc = hidden_job(store, uid, lambda j: j.get("uploading") and j["state"] == "PROCESSING",
                     "measuring while uploading")
    assert up.sent < len(up.data)
    job = up.finish()
    done = client.wait(job.job_id)
    assert done.state == media_pb2.JOB_STATE_DONE, done.error
    assert store.assert_one_mp3(doc["_id"])["attempts"] == 1
    mp3 = client.download(job.job_id)
    decoded, rate, _ = decode_audio(mp3)
    assert len(decoded) == 45 * rate
    assert abs(ebur128(mp3)[0] + 16) <= 1.0


def test_an_mp4_with_its_index_at_the_end_is_not_converted_early(stream_mesh, store, moov_at_end):
    client = user_client(stream_mesh)
    uid = user_id_of(client)
    before = set(store.db["videos.chunks"].distinct("files_id"))
    up = GatedUpload(client, moov_at_end, "slow.mp4")
    wait_for("the upload to reach GridFS",
             lambda: set(store.db["videos.chunks"].distinct("files_id")) - before, timeout=30)
    assert store.jobs.count_documents({"user_id": uid}) == 0  # no job while it uploads
    job = up.finish()
    assert job.state == media_pb2.JOB_STATE_QUEUED
    assert job.progress == 0
    assert client.wait(job.job_id).state == media_pb2.JOB_STATE_DONE
    assert client.download(job.job_id) == normal_mp3(moov_at_end, "slow.mp4")


def test_a_stream_that_cannot_be_converted_waits_for_the_whole_file_before_failing(
        stream_mesh, store, tmp_path):
    """A Matroska video without sound: it is streamable, so its conversion
    starts while it arrives, and fails (no audio). The converter then waits for
    the upload's end (the job is not FAILED while the client still holds the
    rest), converts the complete file, and only that attempt marks the job
    FAILED; no MP3 is left behind."""
    silent = make_media(tmp_path / "silent.mkv", video_codec="h264", audio_codec=None, duration=20.0,
                        video_size=(320, 240), video_noise=30)
    converter_metrics = stream_mesh.metrics_urls["converter"]

    def fallbacks() -> float:
        return scrape(converter_metrics).value("video2mp3_conversion_stream_fallbacks_total")

    before = fallbacks()
    client = user_client(stream_mesh)
    uid = user_id_of(client)
    up = GatedUpload(client, silent, "silent.mkv", content_type="video/x-matroska")
    doc = hidden_job(store, uid, lambda j: j.get("uploading") and j["attempts"] >= 1, "taken while uploading")
    mp3_fid = doc["current_mp3_fid"]
    wait_for("the streamed attempt to fall back", lambda: fallbacks() > before, timeout=30)
    assert not up.call.done()
    assert up.sent < len(up.data)
    assert store.job(doc["_id"])["state"] != "FAILED"  # not before the whole file is in
    job = up.finish()
    final = client.wait(job.job_id)
    assert final.state == media_pb2.JOB_STATE_FAILED, final.error
    assert "audio" in final.error, final.error
    assert fallbacks() == before + 1
    doc = store.job(job.job_id)
    assert doc["attempts"] == 1
    assert doc.get("pending_mp3_fids") == []
    assert store.mp3_files(job.job_id) == []
    assert store.chunks(mp3_fid) == 0


def test_a_form_upload_is_sniffed_by_its_file_part(stream_mesh, store, faststart):
    """The seed's multipart /upload: the file part's bytes decide, its name is the job's."""
    client = user_client(stream_mesh)
    uid = user_id_of(client)
    boundary = "sniffsniff"
    video = Path(faststart).read_bytes()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"form.mp4\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode() + video + f"\r\n--{boundary}--\r\n".encode()
    up = GatedUpload(client, None, "", data=body,
                     content_type=f"multipart/form-data; boundary={boundary}")
    doc = hidden_job(store, uid, lambda j: j.get("uploading") and converting(j), "converting while uploading")
    assert doc["filename"] == "form.mp4"
    job = up.finish()
    assert job.filename == "form.mp4"
    assert job.video_size_bytes == len(video)
    assert client.wait(job.job_id).state == media_pb2.JOB_STATE_DONE
    assert client.download(job.job_id) == normal_mp3(faststart, "form.mp4")


# ---------------------------------------------------------------- failures

def assert_nothing_left(store, uid: str, video_fid, mp3_fid) -> None:
    def clean():
        return (store.jobs.count_documents({"user_id": uid}) == 0
                and store.chunks(video_fid, "videos") == 0
                and store.db["videos.files"].count_documents({"_id": video_fid}) == 0
                and store.chunks(mp3_fid) == 0
                and store.db["mp3s.files"].count_documents({"_id": mp3_fid}) == 0)

    wait_for("the job, its video and its MP3 to be gone", clean, timeout=30, interval=0.1)


def test_cancel_mid_upload_after_conversion_started_leaves_nothing(stream_mesh, store, faststart):
    up, uid, doc = held_mid_conversion(stream_mesh, store, faststart, "cancel.mp4")
    up.call.cancel()
    up.gate.set()
    assert_nothing_left(store, uid, doc["video_fid"], doc["current_mp3_fid"])
    wait_for("the converter to stop the conversion",
             lambda: f"job {doc['_id']} was deleted" in stream_mesh.log_tail("converter", 400), timeout=30)


def test_gateway_killed_mid_streamed_upload_leaves_nothing_after_the_janitor(
        mesh_factory, store, faststart):
    stack = mesh_factory(services=SERVICES, ORPHAN_CHUNK_AGE_S=3, JANITOR_INTERVAL_S=0.5)
    up, uid, doc = held_mid_conversion(stack, store, faststart, "killed.mp4")
    stack.kill("gateway")
    up.gate.set()
    with pytest.raises(grpc.RpcError):
        up.call.result(timeout=30)
    stack.start_service("gateway")  # its janitor cleans up
    assert_nothing_left(store, uid, doc["video_fid"], doc["current_mp3_fid"])
    assert store.db["videos.uploads"].count_documents({"_id": doc["video_fid"]}) == 0


def test_converter_killed_mid_stream_converts_once(mesh_factory, store, faststart):
    stack = mesh_factory(services=SERVICES, CONVERTER_WORKERS=1, CONVERTER_LEASE_S=2, CONVERTER_OVERLAP="on")
    up, uid, doc = held_mid_conversion(stack, store, faststart, "crash.mp4")
    [worker] = worker_pids(stack)
    kill_worker(worker)
    # The redelivery starts again from byte 0 while the upload is still held.
    hidden_job(store, uid, lambda j: j.get("uploading") and j["attempts"] == 2 and converting(j),
               "converting again (attempt 2) while uploading")
    job = up.finish()
    done = up.client.wait(job.job_id)
    assert done.state == media_pb2.JOB_STATE_DONE, done.error
    final = store.assert_one_mp3(job.job_id)
    assert final["attempts"] == 2
    store.assert_attempt_gone(doc["current_mp3_fid"])
    assert up.client.download(job.job_id) == normal_mp3(faststart, "crash.mp4")


# ------------------------------------------- an index at the end: copied as it arrives (converter/spool.py)

@pytest.fixture(scope="module")
def spool_mesh(module_mesh_factory):
    # No express lane (else a file may take it and is never copied); every
    # index-at-the-end MP4 past its first 256 KiB gets its job.
    return module_mesh_factory(services=SERVICES, CONVERTER_WORKERS=1, CONVERTER_OVERLAP="on",
                               EXPRESS_MAX_BYTES=0, SPOOL_AFTER_BYTES=256 * 1024)


def spools(mesh, outcome: str) -> float:
    return scrape(mesh.metrics_urls["converter"]).value("video2mp3_conversion_spools_total", outcome=outcome)


def copying(doc: dict) -> bool:
    return bool(doc.get("uploading")) and bool(doc.get("spool")) and doc["state"] == "PROCESSING"


def test_an_mp4_with_its_index_at_the_end_is_copied_while_it_arrives(spool_mesh, store, moov_at_end):
    """Its job exists (hidden) and a worker holds it before the upload ends;
    the MP3 is the normal path's, and MongoDB was read while the bytes arrived."""
    assert Path(moov_at_end).stat().st_size > 2 * 256 * 1024
    before = spools(spool_mesh, "complete")
    client = user_client(spool_mesh)
    uid = user_id_of(client)
    up = GatedUpload(client, moov_at_end, "slow.mp4")
    hidden_job(store, uid, copying, "copied while uploading")
    assert not up.call.done()
    job = up.finish()
    done = client.wait(job.job_id)
    assert done.state == media_pb2.JOB_STATE_DONE, done.error
    assert store.assert_one_mp3(job.job_id)["attempts"] == 1
    assert client.download(job.job_id) == normal_mp3(moov_at_end, "slow.mp4")
    assert spools(spool_mesh, "complete") == before + 1


def test_a_copying_worker_steps_aside_for_a_waiting_task(spool_mesh, store, moov_at_end, clip):
    """One worker, copying an upload the client holds half-way; another user's
    job arrives: the copy is handed back, that job is converted while the
    upload is still held, and the held one is converted once it ends."""
    before = spools(spool_mesh, "yielded")
    holder = user_client(spool_mesh)
    uid = user_id_of(holder)
    up = GatedUpload(holder, moov_at_end, "slow.mp4")
    held = hidden_job(store, uid, copying, "copied while uploading")

    other = user_client(spool_mesh)
    quick = other.upload(clip)
    assert other.wait(quick.job_id).state == media_pb2.JOB_STATE_DONE
    assert not up.call.done()  # converted while the worker's copy waited for bytes
    assert spools(spool_mesh, "yielded") == before + 1
    doc = store.job(held["_id"])
    assert (doc["state"], doc["published"], doc["uploading"]) == ("QUEUED", False, True)
    assert store.chunks(held["current_mp3_fid"]) == 0  # the handed-back attempt kept nothing

    job = up.finish()
    done = holder.wait(job.job_id)
    assert done.state == media_pb2.JOB_STATE_DONE, done.error
    assert holder.download(job.job_id) == normal_mp3(moov_at_end, "slow.mp4")
    assert "spool" not in store.job(job.job_id)


def test_cancel_while_its_upload_is_copied_leaves_nothing(spool_mesh, store, moov_at_end):
    """The job goes as DeleteJob would; the worker stops copying within a lease
    renewal and writes nothing more; its copy has no name, so no file stays."""
    client = user_client(spool_mesh)
    uid = user_id_of(client)
    up = GatedUpload(client, moov_at_end, "cancel.mp4")
    doc = hidden_job(store, uid, copying, "copied while uploading")
    up.call.cancel()
    up.gate.set()
    assert_nothing_left(store, uid, doc["video_fid"], doc["current_mp3_fid"])
    wait_for("the converter to stop copying",
             lambda: f"job {doc['_id']} was deleted" in spool_mesh.log_tail("converter", 400), timeout=30)


def test_converter_killed_while_copying_converts_once_and_leaves_no_file(mesh_factory, store, moov_at_end,
                                                                         tmp_path):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    stack = mesh_factory(services=SERVICES, CONVERTER_WORKERS=1, CONVERTER_LEASE_S=2, CONVERTER_OVERLAP="on",
                         EXPRESS_MAX_BYTES=0, SPOOL_AFTER_BYTES=256 * 1024, CONVERTER_SPOOL_DIR=str(spool_dir))
    client = user_client(stack)
    uid = user_id_of(client)
    up = GatedUpload(client, moov_at_end, "crash.mp4")
    doc = hidden_job(store, uid, copying, "copied while uploading")
    assert list(spool_dir.iterdir()) == []  # the copy has no name, even while it is written
    [worker] = worker_pids(stack)
    kill_worker(worker)
    # The redelivery copies again from byte 0 while the upload is still held.
    hidden_job(store, uid, lambda j: copying(j) and j["attempts"] == 2, "copying again (attempt 2)")
    job = up.finish()
    done = client.wait(job.job_id)
    assert done.state == media_pb2.JOB_STATE_DONE, done.error
    assert store.assert_one_mp3(job.job_id)["attempts"] == 2
    store.assert_attempt_gone(doc["current_mp3_fid"])
    assert client.download(job.job_id) == normal_mp3(moov_at_end, "crash.mp4")
    assert list(spool_dir.iterdir()) == []


@pytest.fixture(scope="module")
def no_room_mesh(module_mesh_factory):
    return module_mesh_factory(services=SERVICES, CONVERTER_WORKERS=1, CONVERTER_OVERLAP="on",
                               EXPRESS_MAX_BYTES=0, SPOOL_AFTER_BYTES=256 * 1024, CONVERTER_SPOOL_MAX_MB=1)


def test_an_upload_too_big_to_copy_is_converted_from_gridfs_once_complete(no_room_mesh, store, moov_at_end):
    assert Path(moov_at_end).stat().st_size > 1024 * 1024
    before = spools(no_room_mesh, "no_room")
    client = user_client(no_room_mesh)
    uid = user_id_of(client)
    up = GatedUpload(client, moov_at_end, "slow.mp4", hold_at=0.9)
    doc = hidden_job(store, uid, lambda j: j.get("spool") and j["attempts"] >= 1 and not j["published"],
                     "handed back for want of room")
    assert doc["state"] == "QUEUED"
    assert spools(no_room_mesh, "no_room") == before + 1
    job = up.finish()
    done = client.wait(job.job_id)
    assert done.state == media_pb2.JOB_STATE_DONE, done.error
    assert client.download(job.job_id) == normal_mp3(moov_at_end, "slow.mp4")
