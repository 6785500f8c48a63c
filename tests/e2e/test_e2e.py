"""The user journey end to end, against the real mesh (MariaDB, RabbitMQ,
SecantusDB, Envoy, auth, gateway, converter): sign up, log in, upload a video
the test generates, wait for DONE, download, and check the MP3 is the source's
440 Hz tone, as long as the source's audio."""
from __future__ import annotations

import pytest

from testkit.clients import GrpcClient, RestClient
from testkit.media import analyse_mp3, audio_duration, make_media
from video2mp3.media.v1 import media_pb2


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    make_media(path, container="mp4", video_codec="h264", audio_codec="aac", duration=3.0, freq=440.0)
    return path


def assert_is_the_tone(mp3: bytes, source) -> None:
    duration, freq, _rate, _channels = analyse_mp3(mp3)
    assert abs(duration - audio_duration(source)) <= 0.1, (duration, audio_duration(source))
    assert abs(freq - 440.0) < 5.0, freq


def test_grpc_journey_through_envoy(mesh, video):
    client = GrpcClient(mesh.envoy_addr)
    client.sign_up_and_login()
    job = client.upload(video, filename="clip.mp4")
    assert job.state == media_pb2.JOB_STATE_QUEUED
    assert job.filename == "clip.mp4"
    assert job.video_size_bytes == video.stat().st_size
    assert job.options.bitrate_kbps == 192
    assert job.options.channels == 2

    done = client.wait(job.job_id)
    assert done.state == media_pb2.JOB_STATE_DONE, done.error
    assert done.progress == 100
    assert done.mp3_size_bytes > 0
    assert done.complete_time.seconds >= done.create_time.seconds
    mp3 = client.download(job.job_id)
    assert len(mp3) == done.mp3_size_bytes
    assert_is_the_tone(mp3, video)

    listed = client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=client.md, timeout=10)
    assert [j.job_id for j in listed.jobs] == [job.job_id]


def test_grpc_journey_direct_to_services(mesh, video):
    """The same stubs work against the services without Envoy in between."""
    auth, media = GrpcClient(mesh.auth_addr), GrpcClient(mesh.media_addr)
    auth.sign_up_and_login()
    media.token = auth.token
    job = media.wait(media.upload(video).job_id)
    assert job.state == media_pb2.JOB_STATE_DONE, job.error
    assert_is_the_tone(media.download(job.job_id), video)


def test_rest_journey_through_envoy(mesh, video):
    rest = RestClient(mesh.rest_base_url)
    email = rest.sign_up_and_login()

    me = rest.get("/v1/me")
    assert me.status_code == 200
    assert me.json()["email"] == email

    r = rest.upload(video, params={"filename": "café clip.mp4", "bitrate_kbps": "128"})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["state"] == "JOB_STATE_QUEUED"
    assert job["filename"] == "café clip.mp4"
    assert job["options"]["bitrate_kbps"] == 128
    assert int(job["video_size_bytes"]) == video.stat().st_size  # int64 is a JSON string

    done = rest.wait(job["job_id"])
    assert done["state"] == "JOB_STATE_DONE", done["error"]
    assert done["progress"] == 100

    r = rest.get(f"/v1/jobs/{job['job_id']}/mp3", stream=True)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/mpeg"
    # RFC 6266: an ASCII fallback, then the exact (UTF-8) name.
    assert r.headers["content-disposition"] == (
        "attachment; filename=\"cafe clip.mp3\"; filename*=UTF-8''caf%C3%A9%20clip.mp3")
    mp3 = b"".join(r.iter_content(64 * 1024))
    assert len(mp3) == int(done["mp3_size_bytes"])
    assert_is_the_tone(mp3, video)


def test_health_reports_each_dependency(mesh):
    r = RestClient(mesh.rest_base_url).get("/health", token="")
    assert r.status_code == 200
    assert r.json() == {"status": "healthy", "mongodb": "connected", "rabbitmq": "connected",
                        "mysql": "connected"}


def test_the_seeds_login_and_multipart_upload_still_work(mesh, video):
    """Existing users of the Flask seed: `curl -X POST /login -u email:password`
    and `curl -F file=@video.mp4 /upload` reach the same RPCs."""
    rest = RestClient(mesh.rest_base_url)
    email = rest.sign_up_and_login()
    r = rest.s.post(f"{rest.base}/login", auth=(email, "correct horse 1"), timeout=20)
    assert r.status_code == 200, r.text
    # The token alone, as text: `TOKEN=$(curl -X POST .../login -u ...)`.
    assert r.headers["content-type"].startswith("text/plain")
    token = r.text
    assert rest.s.get(f"{rest.base}/v1/me", headers={"Authorization": f"Bearer {token}"},
                      timeout=20).json()["email"] == email
    bad = rest.s.post(f"{rest.base}/login", auth=(email, "wrong horse 1"), timeout=20)
    assert bad.status_code == 401
    assert bad.headers["content-type"] == "application/json"
    assert bad.json()["details"][0]["reason"] == "BAD_CREDENTIALS"
    # The versioned route keeps answering JSON.
    r = rest.s.post(f"{rest.base}/v1/login", json={"email": email, "password": "correct horse 1"}, timeout=20)
    assert r.headers["content-type"] == "application/json"
    assert r.json()["token_type"] == "Bearer"

    with open(video, "rb") as f:  # requests streams the multipart body from the file
        r = rest.s.post(f"{rest.base}/upload", files={"file": ("seed clip.mp4", f, "video/mp4")},
                        data={"note": "ignored"}, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["filename"] == "seed clip.mp4"
    assert int(job["video_size_bytes"]) == video.stat().st_size  # the file part only
    rest.token = token
    assert rest.wait(job["job_id"])["state"] == "JOB_STATE_DONE"
    # The seed's GET /download?fid=<id>, named after the upload.
    r = rest.get("/download", params={"fid": job["job_id"]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/mpeg"
    assert r.headers["content-disposition"] == (
        "attachment; filename=\"seed clip.mp3\"; filename*=UTF-8''seed%20clip.mp3")
    assert_is_the_tone(r.content, video)
    assert rest.get("/download", params={"fid": job["job_id"], "job_id": "other"}).status_code == 400
    assert rest.get("/download", params={"fid": "no-such-job"}).status_code == 404

    r = rest.s.post(f"{rest.base}/upload", data=b"--x\r\nbroken", timeout=20,
                    headers={"Authorization": f"Bearer {token}",
                             "Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400
    assert "multipart" in r.json()["message"]
