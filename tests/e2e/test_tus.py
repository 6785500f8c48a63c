"""Resumable uploads (tus 1.0 at /v1/uploads, gateway/tus.py) with the real
clients: tuspy (PyPI) and tus-js-client (npm, run by Node), through Envoy.

Uploads are cut off in the middle (testkit/tcp_proxy.py between the client
and Envoy, slowed down so the cut lands mid-PATCH) and resumed, also by
another client and after the gateway restarted or was killed; incomplete
uploads expire or are terminated and leave nothing; every limit of the
plain upload holds. The mesh keeps videos (VIDEO_RETENTION) so that what was
stored can be compared with the file, byte for byte.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from bson import ObjectId
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError

import testkit
from localmesh.processes import wait_for
from testkit.clients import RestClient
from testkit.media import decode_audio, ebur128, make_media, make_noise
from testkit.tcp_proxy import TcpProxy
from video2mp3.core.settings import MongoSettings
from video2mp3.storage.mongo import Mongo

ROOT = testkit.ROOT
CHUNK = 255 * 1024  # GridFS chunk size
MAX_BYTES = 64 * 1024 * 1024
NODE_CLIENT = ROOT / "tests" / "interop" / "tus_client.js"


@pytest.fixture(scope="module")
def tus_mesh(module_mesh_factory):
    return module_mesh_factory(VIDEO_RETENTION=3600, RETENTION_SWEEP_INTERVAL_S=0.5,
                               MAX_UPLOAD_BYTES=MAX_BYTES)


@pytest.fixture(scope="module")
def db(tus_mesh):
    m = Mongo(MongoSettings(uri=tus_mesh.env["MONGO_URI"], timeout_ms=5000))
    yield m.db
    m.close()


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """~12 MB, its index at the end (not streamable): converted after its upload."""
    return Path(make_media(tmp_path_factory.mktemp("tus") / "big.mp4", video_codec="h264", duration=20.0,
                           video_size=(320, 240), video_noise=60))


@pytest.fixture(scope="module")
def faststart(tmp_path_factory) -> Path:
    return Path(make_media(tmp_path_factory.mktemp("tus") / "fast.mp4", video_codec="h264", duration=30.0,
                           faststart=True, video_noise=30))


@pytest.fixture
def rest(tus_mesh) -> RestClient:
    client = RestClient(tus_mesh.rest_base_url)
    client.sign_up_and_login()
    return client


def tus_headers(rest: RestClient, **extra) -> dict:
    return {"Authorization": f"Bearer {rest.token}", "Tus-Resumable": "1.0.0", **extra}


def metadata(**values) -> str:
    return ",".join(f"{k} {base64.b64encode(str(v).encode()).decode()}" for k, v in values.items())


def uploader(base: str, rest: RestClient, path: Path, chunk_size: int, url: str | None = None,
             retries: int = 0, **meta):
    client = tus_client.TusClient(f"{base}/v1/uploads", headers={"Authorization": f"Bearer {rest.token}"})
    return client.uploader(str(path), chunk_size=chunk_size, url=url, metadata={"filename": path.name, **meta},
                           retries=retries, retry_delay=1)


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def head(base: str, rest: RestClient, uid: str) -> requests.Response:
    return requests.head(f"{base}/v1/uploads/{uid}", headers=tus_headers(rest), timeout=10)


def stored_video(db, uid: str) -> bytes:
    """The video of a complete upload's job, as GridFS has it."""
    job = db.jobs.find_one({"_id": uid})
    files = db["videos.files"].find_one({"_id": job["video_fid"]})
    chunks = db["videos.chunks"].find({"files_id": job["video_fid"]}).sort("n", 1)
    data = b"".join(c["data"] for c in chunks)
    assert len(data) == files["length"]
    return data


def assert_nothing_left(db, uid: str, video_fid) -> None:
    assert db.tus_uploads.find_one({"_id": uid}) is None
    assert db.jobs.find_one({"_id": uid}) is None
    assert db["videos.chunks"].count_documents({"files_id": video_fid}) == 0
    assert db["videos.files"].count_documents({"_id": video_fid}) == 0


def wait_stored(db, uid: str, at_least: int) -> int:
    """Until the upload has at least `at_least` bytes in full chunks; their bytes."""
    fid = db.tus_uploads.find_one({"_id": uid})["video_fid"]
    return wait_for(f"{at_least} bytes of {uid} stored",
                    lambda: (n := db["videos.chunks"].count_documents({"files_id": fid}) * CHUNK) >= at_least and n,
                    timeout=60, interval=0.02)


# ------------------------------------------------------------------ the protocol

def test_options_advertise_tus_and_need_no_token(tus_mesh):
    r = requests.options(f"{tus_mesh.rest_base_url}/v1/uploads", timeout=10)
    assert r.status_code == 204
    assert r.headers["Tus-Version"] == "1.0.0"
    assert set(r.headers["Tus-Extension"].split(",")) == {"creation", "termination", "expiration"}
    assert r.headers["Tus-Max-Size"] == str(MAX_BYTES)


def test_tuspy_uploads_a_video_that_becomes_its_job(tus_mesh, rest, db, video):
    base = tus_mesh.rest_base_url
    # PATCHes of 3 MB: not a multiple of the GridFS chunk, so each leaves a tail.
    up = uploader(base, rest, video, chunk_size=3_000_000, bitrate_kbps="128", channels="1")
    up.upload()
    uid = upload_id(up.url)
    assert up.url == f"{base}/v1/uploads/{uid}"
    job = rest.wait(uid)
    assert job["state"] == "JOB_STATE_DONE", job
    assert (job["filename"], job["video_size_bytes"]) == ("big.mp4", str(video.stat().st_size))
    assert (job["options"]["bitrate_kbps"], job["options"]["channels"]) == (128, 1)
    assert stored_video(db, uid) == video.read_bytes()
    assert db.tus_uploads.find_one({"_id": uid}) is None  # the upload is its job now
    h = head(base, rest, uid)
    assert (h.status_code, h.headers["Upload-Offset"], h.headers["Upload-Length"]) == (
        200, str(video.stat().st_size), str(video.stat().st_size))
    got = rest.get(f"/v1/uploads/{uid}").json()
    assert got["complete"] is True
    assert rest.get(f"/v1/jobs/{uid}/mp3").content[:3] in (b"ID3", b"\xff\xfb")


def test_creation_answers_location_expiry_and_is_safe_to_retry(tus_mesh, rest):
    base = tus_mesh.rest_base_url
    rid = str(uuid.uuid4())
    headers = tus_headers(rest, **{"Upload-Length": "1000",
                                   "Upload-Metadata": metadata(filename="a.mp4", request_id=rid)})
    first = requests.post(f"{base}/v1/uploads", headers=headers, timeout=10)
    assert first.status_code == 201, first.text
    assert first.headers["Location"].startswith("/v1/uploads/")
    assert first.headers["Tus-Resumable"] == "1.0.0"
    assert first.headers["Upload-Expires"].endswith(" GMT")
    again = requests.post(f"{base}/v1/uploads", headers=headers, timeout=10)
    assert (again.status_code, again.headers["Location"]) == (201, first.headers["Location"])
    h = head(base, rest, upload_id(first.headers["Location"]))
    assert (h.status_code, h.headers["Upload-Offset"], h.headers["Upload-Length"]) == (200, "0", "1000")
    assert h.headers["Cache-Control"] == "no-store"


def test_protocol_errors_get_the_statuses_tus_names(tus_mesh, rest, db):
    base = tus_mesh.rest_base_url
    r = requests.post(f"{base}/v1/uploads", headers=tus_headers(rest, **{"Upload-Length": "100"}), timeout=10)
    url = f"{base}{r.headers['Location']}"
    patch = {"Content-Type": "application/offset+octet-stream"}
    cases = [
        (requests.patch(url, data=b"abc", headers=tus_headers(rest, **patch, **{"Upload-Offset": "5"})), 409),
        (requests.patch(url, data=b"abc", headers=tus_headers(rest, **{"Upload-Offset": "0",
                                                                        "Content-Type": "text/plain"})), 415),
        (requests.patch(url, data=b"abc", headers={**tus_headers(rest, **patch, **{"Upload-Offset": "0"}),
                                                   "Tus-Resumable": "0.2.2"}), 412),
        (requests.patch(url, data=b"x" * 101, headers=tus_headers(rest, **patch, **{"Upload-Offset": "0"})), 413),
        (requests.post(f"{base}/v1/uploads", headers=tus_headers(rest, **{"Upload-Length": "x"})), 400),
        (requests.post(f"{base}/v1/uploads", headers=tus_headers(rest)), 400),
        (requests.post(f"{base}/v1/uploads", headers=tus_headers(
            rest, **{"Upload-Length": "10", "Upload-Metadata": metadata(bitrate_kbps=999)})), 400),
        (requests.post(f"{base}/v1/uploads", headers=tus_headers(
            rest, **{"Upload-Length": str(MAX_BYTES + 1)})), 413),
        (requests.head(f"{base}/v1/uploads/{uuid.uuid4().hex}", headers=tus_headers(rest)), 404),
        (requests.post(f"{base}/v1/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"}), 401),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.request.method, response.request.headers, response.text)
        assert response.headers.get("Tus-Resumable") == "1.0.0" or status == 401
    assert cases[0][0].headers["Upload-Offset"] == "0"  # where to go on
    assert cases[2][0].headers["Tus-Version"] == "1.0.0"
    # The refused PATCHes stored nothing.
    assert head(base, rest, upload_id(url)).headers["Upload-Offset"] == "0"
    # Another user's upload does not exist for them.
    other = RestClient(base)
    other.sign_up_and_login()
    assert head(base, other, upload_id(url)).status_code == 404
    assert requests.delete(url, headers=tus_headers(other), timeout=10).status_code == 404


def test_too_large_at_creation_is_413_for_tuspy(tus_mesh, rest, tmp_path):
    big = tmp_path / "huge.mp4"
    with open(big, "wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: only its size matters here
    with pytest.raises(TusCommunicationError) as e:
        uploader(tus_mesh.rest_base_url, rest, big, chunk_size=CHUNK).upload()
    assert e.value.status_code == 413


def test_one_patch_at_a_time(tus_mesh, rest):
    """A second PATCH while one is receiving is 423 (tus-js-client and the
    page retry it); after the first ended, the offset decides."""
    base = tus_mesh.rest_base_url
    r = requests.post(f"{base}/v1/uploads", headers=tus_headers(rest, **{"Upload-Length": "2000000"}), timeout=10)
    url = f"{base}{r.headers['Location']}"
    gate, sent = threading.Event(), threading.Event()

    def slow_body():
        yield b"a" * 1000
        sent.set()
        gate.wait(30)
        yield b"b" * 1000

    headers = tus_headers(rest, **{"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"})
    result: dict[str, requests.Response] = {}
    t = threading.Thread(target=lambda: result.update(r=requests.patch(url, data=slow_body(), headers=headers,
                                                                       timeout=60)))
    t.start()
    assert sent.wait(10)
    time.sleep(0.5)
    second = requests.patch(url, data=b"c" * 10, headers=headers, timeout=10)
    assert second.status_code == 423, second.text
    gate.set()
    t.join(30)
    assert (result["r"].status_code, result["r"].headers["Upload-Offset"]) == (204, "2000")


# ------------------------------------------------------------------ cut off, resumed

def test_tuspy_cut_off_mid_patch_resumes_from_another_client(tus_mesh, rest, db, video):
    """The connection drops in the middle of a PATCH: the gateway keeps every
    byte that reached it (full chunks plus the tail), HEAD from anywhere says
    how many, and tus-js-client finishes what tuspy started."""
    base = tus_mesh.rest_base_url
    size = video.stat().st_size
    host, port = base.removeprefix("http://").split(":")
    with TcpProxy(host, int(port)) as proxy:
        proxy.rate = 2e6
        up = uploader(f"http://127.0.0.1:{proxy.port}", rest, video, chunk_size=size)
        up.set_url(up.create_url())
        uid = upload_id(up.url)
        failed = {}

        def run():
            try:
                up.upload()
            except Exception as e:  # noqa: BLE001 - the cut, expected
                failed["error"] = e

        t = threading.Thread(target=run)
        t.start()
        wait_stored(db, uid, 2 * 1024 * 1024)
        proxy.cut()
        t.join(30)
    assert "error" in failed, "the upload should have been cut off"
    offset = wait_for("the cut PATCH recorded", lambda: (d := db.tus_uploads.find_one({"_id": uid})) and
                      d["lock_owner"] is None and d["offset"], timeout=30)
    doc = db.tus_uploads.find_one({"_id": uid})
    assert 2 * 1024 * 1024 <= offset < size
    assert len(doc["tail"]) == offset % CHUNK  # the partial last chunk kept
    assert db["videos.chunks"].count_documents({"files_id": doc["video_fid"]}) == offset // CHUNK
    h = head(base, rest, uid)
    assert (h.status_code, int(h.headers["Upload-Offset"])) == (200, offset)
    # Resumed by tus-js-client: it asks HEAD and sends the rest only.
    out = node_upload(base, rest, video, url=f"{base}/v1/uploads/{uid}")
    assert out[-1]["event"] == "success", out
    assert rest.wait(uid)["state"] == "JOB_STATE_DONE"
    assert stored_video(db, uid) == video.read_bytes()


def node_upload(base: str, rest: RestClient, path: Path, url: str | None = None, meta: dict | None = None,
                on_event=None, chunk: int | None = None) -> list[dict]:
    """tus-js-client in Node; with `url`, it resumes that upload."""
    script = NODE_CLIENT
    args = ["node", str(script), f"{base}/v1/uploads", rest.token, str(path),
            json.dumps(meta or {"filename": path.name}), str(chunk or "")]
    env = dict(os.environ, NODE_PATH=str(ROOT / "node_modules"))
    if url:
        env["TUS_UPLOAD_URL"] = url
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    events = []
    assert proc.stdout is not None
    for line in proc.stdout:
        events.append(json.loads(line))
        if on_event:
            on_event(events[-1])
    proc.wait(120)
    assert events, proc.stderr.read() if proc.stderr else ""
    return events


def test_tus_js_client_survives_a_dropped_connection_on_its_own(tus_mesh, rest, db, video):
    """The cut is the client's problem only for a moment: tus-js-client
    retries, asks HEAD and resumes; the job is the whole file."""
    base = tus_mesh.rest_base_url
    host, port = base.removeprefix("http://").split(":")
    with TcpProxy(host, int(port)) as proxy:
        proxy.rate = 2e6
        cut = threading.Event()

        def on_event(e):
            if e["event"] == "progress" and e["sent"] > e["total"] * 0.3 and not cut.is_set():
                cut.set()
                proxy.cut()
                threading.Timer(1.0, proxy.restore).start()

        events = node_upload(f"http://127.0.0.1:{proxy.port}", rest, video, on_event=on_event,
                             meta={"filename": "js.mp4", "vbr_quality": "4"})
    assert cut.is_set()
    assert any(e["event"] == "retry" for e in events), events
    assert events[-1]["event"] == "success", events[-5:]
    uid = upload_id(events[-1]["url"])
    job = rest.wait(uid)
    assert (job["state"], job["filename"], job["options"]["vbr_quality"]) == ("JOB_STATE_DONE", "js.mp4", 4)
    assert stored_video(db, uid) == video.read_bytes()


def test_trim_and_loudness_in_the_metadata(tus_mesh, rest, tmp_path):
    """start_ms, end_ms and loudness_lufs ride in Upload-Metadata as UploadVideo
    names them; a bad one is refused at creation, naming the field."""
    path = Path(make_noise(tmp_path / "n.m4a", 6.0, level=0.05))
    up = uploader(tus_mesh.rest_base_url, rest, path, chunk_size=1 << 20, start_ms="500", end_ms="4500",
                  loudness_lufs="-14.5")
    up.upload()
    job = rest.wait(upload_id(up.url))
    assert job["state"] == "JOB_STATE_DONE", job
    assert (job["options"]["start_ms"], job["options"]["end_ms"], job["options"]["loudness_lufs"]) == (
        "500", "4500", -14.5)
    mp3 = rest.get(f"/v1/jobs/{job['job_id']}/mp3").content
    decoded, rate, _ = decode_audio(mp3)
    assert len(decoded) == 4 * rate
    assert abs(ebur128(mp3)[0] + 14.5) <= 1.0
    for bad, field in ((dict(end_ms="100", start_ms="200"), "end_ms"), (dict(loudness_lufs="loud"), "loudness_lufs")):
        r = requests.post(f"{tus_mesh.rest_base_url}/v1/uploads", headers=tus_headers(
            rest, **{"Upload-Length": "10", "Upload-Metadata": metadata(**bad)}), timeout=10)
        assert r.status_code == 400, r.text
        assert field in r.json()["message"]


def test_resume_after_the_gateway_restarted(tus_mesh, rest, db, video):
    """Nothing lives in a gateway's memory between requests: restarted, it
    answers HEAD with the offset and takes the rest."""
    base = tus_mesh.rest_base_url
    up = uploader(base, rest, video, chunk_size=1_000_000)
    for _ in range(3):
        up.upload_chunk()
    uid = upload_id(up.url)
    tus_mesh.restart("gateway")
    h = head(base, rest, uid)
    assert (h.status_code, h.headers["Upload-Offset"]) == (200, "3000000")
    again = uploader(base, rest, video, chunk_size=4_000_000, url=up.url)
    again.upload()
    assert rest.wait(uid)["state"] == "JOB_STATE_DONE"
    assert stored_video(db, uid) == video.read_bytes()


def test_a_gateway_killed_mid_patch_loses_at_most_a_second(tus_mesh, rest, db, video):
    """SIGKILL mid-PATCH: the offset recorded at the last checkpoint stands,
    chunks stored after it are dropped by the next PATCH, and the file is whole."""
    base = tus_mesh.rest_base_url
    size = video.stat().st_size
    host, port = base.removeprefix("http://").split(":")
    with TcpProxy(host, int(port)) as proxy:
        proxy.rate = 2e6
        up = uploader(f"http://127.0.0.1:{proxy.port}", rest, video, chunk_size=size)
        up.set_url(up.create_url())
        uid = upload_id(up.url)
        def run():
            with contextlib.suppress(Exception):  # its gateway is killed: expected
                up.upload()

        t = threading.Thread(target=run)
        t.start()
        checkpoint = wait_for("a checkpoint", lambda: db.tus_uploads.find_one({"_id": uid})["offset"],
                              timeout=60, interval=0.05)
        tus_mesh.kill("gateway")
        t.join(30)
    tus_mesh.start_service("gateway")
    h = head(base, rest, uid)
    offset = int(h.headers["Upload-Offset"])
    assert checkpoint <= offset < size
    assert offset % CHUNK == 0
    assert db.tus_uploads.find_one({"_id": uid})["lock_owner"] is not None  # the dead PATCH's
    # Its lock runs out within LOCK_S (423 until then; tuspy retries).
    uploader(base, rest, video, chunk_size=size, url=f"{base}/v1/uploads/{uid}", retries=20).upload()
    assert rest.wait(uid)["state"] == "JOB_STATE_DONE"
    assert stored_video(db, uid) == video.read_bytes()


# ------------------------------------------------------------------ convert while uploading

def test_a_streamable_upload_is_converted_while_it_arrives(tus_mesh, rest, db, faststart):
    base = tus_mesh.rest_base_url
    size = faststart.stat().st_size
    up = uploader(base, rest, faststart, chunk_size=size // 2 + 1)
    up.upload_chunk()
    uid = upload_id(up.url)
    job = wait_for("the hidden job converting", lambda: (d := db.jobs.find_one({"_id": uid})) and
                   d["state"] == "PROCESSING" and d, timeout=60, interval=0.05)
    assert job["uploading"]
    assert job["published"]
    assert rest.get(f"/v1/jobs/{uid}").status_code == 404  # hidden until the upload ends
    up.upload()
    job = rest.wait(uid)
    assert job["state"] == "JOB_STATE_DONE"
    assert stored_video(db, uid) == faststart.read_bytes()


# ------------------------------------------------------------------ nothing kept

def test_termination_deletes_everything_written(tus_mesh, rest, db, video):
    base = tus_mesh.rest_base_url
    up = uploader(base, rest, video, chunk_size=1_000_000)
    up.upload_chunk()
    up.upload_chunk()
    uid = upload_id(up.url)
    fid = db.tus_uploads.find_one({"_id": uid})["video_fid"]
    r = requests.delete(f"{base}/v1/uploads/{uid}", headers=tus_headers(rest), timeout=10)
    assert (r.status_code, r.headers["Tus-Resumable"]) == (204, "1.0.0")
    assert head(base, rest, uid).status_code == 404
    assert_nothing_left(db, uid, fid)


def test_incomplete_uploads_expire_and_leave_nothing(tus_mesh, rest, db, video):
    base = tus_mesh.rest_base_url
    up = uploader(base, rest, video, chunk_size=1_000_000)
    up.upload_chunk()
    uid = upload_id(up.url)
    doc = db.tus_uploads.find_one({"_id": uid})
    expires = requests.head(f"{base}/v1/uploads/{uid}", headers=tus_headers(rest), timeout=10).headers["Upload-Expires"]
    assert expires.endswith("GMT")
    # UPLOAD_EXPIRY_S (24 h) later, as far as this upload knows:
    with expired_but_held(db, uid):
        assert head(base, rest, uid).status_code == 410
    wait_for("the expired upload swept", lambda: db.tus_uploads.find_one({"_id": uid}) is None, timeout=30)
    assert head(base, rest, uid).status_code == 404
    assert_nothing_left(db, uid, doc["video_fid"])
    assert isinstance(doc["video_fid"], ObjectId)


class expired_but_held:
    """Backdate the upload's expiry, and hold a lock on it meanwhile (the sweep
    leaves an upload with a live lock alone), so HEAD sees it expired first."""

    def __init__(self, db, uid):
        self.db, self.uid = db, uid

    def __enter__(self):
        # A live lock makes the sweep wait: hold one while looking.
        self.db.tus_uploads.update_one({"_id": self.uid}, {"$set": {
            "expire_time": _past(), "lock_owner": "test", "lock_until": _future()}})

    def __exit__(self, *exc):
        self.db.tus_uploads.update_one({"_id": self.uid}, {"$set": {"lock_owner": None, "lock_until": None}})


def _past():
    import datetime as dt
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)


def _future():
    import datetime as dt
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
