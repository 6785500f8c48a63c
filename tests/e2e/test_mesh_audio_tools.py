"""Cover art, chapters, split by chapter and ZIP downloads through the real
mesh, over gRPC, REST and tus, measured with ffprobe and ffmpeg
(testkit/outside.py): the chapters and picture players see, the decoded
length of every part, the bytes a ZIP unpacks to."""
from __future__ import annotations

import base64
import io
import zipfile

import grpc
import pymongo
import pytest
import requests

from testkit import outside
from testkit.clients import GrpcClient, RestClient
from testkit.media import make_text_file
from testkit.status import rest_details
from video2mp3.converter import cover_art
from video2mp3.media.v1 import media_pb2

CHAPTERS = [(0, 2000, "Intro"), (2000, 4500, "Fragen & Antworten"), (4500, 6000, "Ende")]


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    """Three chapters; the first second is black (no cover material)."""
    return outside.make_chaptered_video(tmp_path_factory.mktemp("media") / "talk.mp4", CHAPTERS, black_ms=1000)


@pytest.fixture(scope="module")
def rest(mesh):
    client = RestClient(mesh.rest_base_url)
    client.sign_up_and_login()
    return client


@pytest.fixture(scope="module")
def split_job(rest, talk):
    r = rest.upload(talk, params={"filename": "talk.mp4", "split_chapters": "true", "cover_art": "true",
                                  "bitrate_kbps": "128"})
    assert r.status_code == 200, r.text
    assert r.json()["options"]["split_chapters"] is True
    done = rest.wait(r.json()["job_id"])
    assert done["state"] == "JOB_STATE_DONE", done["error"]
    return done


def test_grpc_cover_art_and_chapters(mesh, talk, tmp_path):
    client = GrpcClient(mesh.envoy_addr)
    client.sign_up_and_login()
    job = client.upload(talk, filename="talk.mp4", cover_art=True)
    assert job.options.cover_art
    done = client.wait(job.job_id)
    assert done.state == media_pb2.JOB_STATE_DONE, done.error
    assert [(f.track, f.name) for f in done.files] == [(1, "talk.mp3")]
    assert done.files[0].size_bytes == done.mp3_size_bytes
    mp3 = tmp_path / "talk.mp3"
    mp3.write_bytes(client.download(job.job_id))
    assert outside.chapters(mp3) == CHAPTERS
    pictures = [s for s in outside.probe(mp3)["streams"] if s.get("disposition", {}).get("attached_pic")]
    assert len(pictures) == 1
    width, _, mean, std = outside.picture_stats(outside.attached_picture(mp3, tmp_path / "cover.jpg"))
    assert width <= cover_art.MAX_WIDTH
    assert mean > cover_art.MIN_MEAN, mean  # not the black first second
    assert std > cover_art.MIN_STDDEV, std


def test_without_cover_art_no_picture(mesh, talk, tmp_path):
    client = GrpcClient(mesh.envoy_addr)
    client.sign_up_and_login()
    done = client.wait(client.upload(talk, filename="talk.mp4").job_id)
    mp3 = tmp_path / "talk.mp3"
    mp3.write_bytes(client.download(done.job_id))
    assert [s["codec_type"] for s in outside.probe(mp3)["streams"]] == ["audio"]
    assert outside.chapters(mp3) == CHAPTERS  # chapters are kept by default


def test_rest_split_chapters_one_by_one(rest, split_job, tmp_path):
    files = split_job["files"]
    assert [(f["track"], f["chapter_title"]) for f in files] == [(n + 1, c[2]) for n, c in enumerate(CHAPTERS)]
    assert [f["name"] for f in files] == ["talk - 01 - Intro.mp3", "talk - 02 - Fragen & Antworten.mp3",
                                          "talk - 03 - Ende.mp3"]
    assert int(split_job["mp3_size_bytes"]) == sum(int(f["size_bytes"]) for f in files)
    lengths = []
    for f in files:
        r = rest.get(f"/v1/jobs/{split_job['job_id']}/mp3s/{f['track']}")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "audio/mpeg"
        assert "filename*=UTF-8''talk%20-%20" in r.headers["content-disposition"]
        assert len(r.content) == int(f["size_bytes"])
        path = tmp_path / f"{f['track']}.mp3"
        path.write_bytes(r.content)
        tags = outside.probe(path)["format"]["tags"]
        assert (tags["track"], tags["title"]) == (f"{f['track']}/3", f["chapter_title"])
        lengths.append(outside.decoded_samples(path))
    rate = 44100
    # Sample-exact per chapter at the output rate (the last takes the audio's tail).
    assert lengths[:-1] == [round((e - s) * rate / 1000) for s, e, _ in CHAPTERS[:-1]]
    assert abs(sum(lengths) - CHAPTERS[-1][1] * rate // 1000) < 2048  # the AAC source's own tail


def test_rest_split_job_whole_is_a_zip(rest, split_job):
    job_id = split_job["job_id"]
    r = rest.get(f"/v1/jobs/{job_id}/mp3")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert 'filename="talk.zip"' in r.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert z.namelist() == [f["name"] for f in split_job["files"]]
        for f in split_job["files"]:
            assert z.read(f["name"]) == rest.get(f"/v1/jobs/{job_id}/mp3s/{f['track']}").content


def test_track_errors(rest, split_job):
    r = rest.get(f"/v1/jobs/{split_job['job_id']}/mp3s/4")
    assert r.status_code == 404
    assert "tracks 1 to 3" in r.json()["message"]
    r = rest.get(f"/v1/jobs/{split_job['job_id']}/mp3s/-1")
    assert r.status_code == 400
    assert "track" in r.json()["message"]


def test_zip_of_several_jobs(mesh, rest, talk, split_job):
    plain = rest.upload(talk, params={"filename": "talk.mp4"}).json()["job_id"]
    assert rest.wait(plain)["state"] == "JOB_STATE_DONE"
    ids = [plain, split_job["job_id"]]
    r = rest.get("/v1/jobs:zip", params=[("job_ids", i) for i in ids], stream=True)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    pieces = list(r.iter_content(None))
    with zipfile.ZipFile(io.BytesIO(b"".join(pieces))) as z:
        names = z.namelist()
        assert names == ["talk.mp3", *(f"talk/{f['name']}" for f in split_job["files"])]
        assert z.read("talk.mp3") == rest.get(f"/v1/jobs/{plain}/mp3").content
        first = split_job["files"][0]
        assert z.read(f"talk/{first['name']}") == rest.get(f"/v1/jobs/{split_job['job_id']}/mp3s/1").content
    # gRPC: the same archive, streamed.
    client = GrpcClient(mesh.envoy_addr)
    client.token = rest.token
    messages = list(client.media.ZipJobs(media_pb2.ZipJobsRequest(job_ids=ids), metadata=client.md, timeout=60))
    assert messages[0].content_type == "application/zip"
    # The same entries and bytes (each archive stamps its entries with the time it is made).
    with zipfile.ZipFile(io.BytesIO(b"".join(m.data for m in messages))) as g, \
            zipfile.ZipFile(io.BytesIO(b"".join(pieces))) as z:
        assert g.namelist() == z.namelist()
        assert all(g.read(name) == z.read(name) for name in z.namelist())


def test_zip_refuses_unknown_and_unfinished_jobs(mesh, rest, split_job, tmp_path):
    r = rest.get("/v1/jobs:zip", params={"job_ids": f"{split_job['job_id']},nosuchjob"})
    assert r.status_code == 404
    assert "nosuchjob" in r.json()["message"]
    other = RestClient(mesh.rest_base_url)
    other.sign_up_and_login()
    r = other.get("/v1/jobs:zip", params={"job_ids": split_job["job_id"]})
    assert r.status_code == 404  # someone else's job looks like none
    failed = rest.upload(make_text_file(tmp_path / "notes.mp4"), params={"filename": "notes.mp4"}).json()["job_id"]
    assert rest.wait(failed)["state"] == "JOB_STATE_FAILED"
    r = rest.get("/v1/jobs:zip", params=[("job_ids", split_job["job_id"]), ("job_ids", failed)])
    assert r.status_code == 409
    assert failed in r.json()["message"]
    r = rest.get("/v1/jobs:zip")
    assert r.status_code == 400
    assert rest_details(r.json())["BadRequest"]["field_violations"][0]["field"] == "job_ids"


def test_tus_metadata_flags(rest):
    def create(meta: dict) -> requests.Response:
        value = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())
        return rest.s.post(f"{rest.base}/v1/uploads", headers={**rest.headers(), "Tus-Resumable": "1.0.0",
                                                               "Upload-Length": "1000", "Upload-Metadata": value})
    r = create({"filename": "talk.mp4", "cover_art": "true", "split_chapters": "1"})
    assert r.status_code == 201, r.text
    upload = rest.get(r.headers["location"]).json()
    assert upload["options"]["cover_art"] is True
    assert upload["options"]["split_chapters"] is True
    r = create({"filename": "talk.mp4", "cover_art": "maybe"})
    assert r.status_code == 400
    assert rest_details(r.json())["BadRequest"]["field_violations"][0]["field"] == "cover_art"


def test_rest_flag_must_be_a_boolean(rest, talk):
    r = rest.upload(talk, params={"filename": "talk.mp4", "cover_art": "maybe"})
    assert r.status_code == 400


def test_deleting_a_split_job_deletes_every_mp3(mesh, rest, talk):
    r = rest.upload(talk, params={"filename": "talk.mp4", "split_chapters": "true"})
    job_id = r.json()["job_id"]
    assert rest.wait(job_id)["state"] == "JOB_STATE_DONE"
    db: pymongo.database.Database = pymongo.MongoClient(mesh.env["MONGO_URI"]).get_default_database()
    ids = [d["_id"] for d in db["mp3s.files"].find({"metadata.job_id": job_id})]
    assert len(ids) == 3
    assert db["mp3s.chunks"].count_documents({"files_id": {"$in": ids}}) >= 3
    assert rest.s.delete(f"{rest.base}/v1/jobs/{job_id}", headers=rest.headers()).status_code == 200
    assert db["mp3s.files"].count_documents({"_id": {"$in": ids}}) == 0
    assert db["mp3s.chunks"].count_documents({"files_id": {"$in": ids}}) == 0


def test_grpc_zip_needs_ids(mesh, rest):
    client = GrpcClient(mesh.envoy_addr)
    client.token = rest.token
    with pytest.raises(grpc.RpcError) as e:
        list(client.media.ZipJobs(media_pb2.ZipJobsRequest(), metadata=client.md, timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_convert_while_uploading_keeps_cover_and_chapters(rest, tmp_path):
    """A Matroska file is converted as it arrives (gateway/early_jobs.py): the
    cover comes from its first seconds, read front to back, and the chapters
    from its header."""
    mkv = outside.make_chaptered_video(tmp_path / "talk.mkv", CHAPTERS, black_ms=1000)
    r = rest.upload(mkv, params={"filename": "talk.mkv", "split_chapters": "true", "cover_art": "true"})
    assert r.status_code == 200, r.text
    done = rest.wait(r.json()["job_id"])
    assert done["state"] == "JOB_STATE_DONE", done["error"]
    assert [f["chapter_title"] for f in done["files"]] == [t for _, _, t in CHAPTERS]
    path = tmp_path / "2.mp3"
    path.write_bytes(rest.get(f"/v1/jobs/{done['job_id']}/mp3s/2").content)
    _, _, mean, _ = outside.picture_stats(outside.attached_picture(path, tmp_path / "cover.jpg"))
    assert mean > cover_art.MIN_MEAN, mean
