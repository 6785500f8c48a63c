"""Trim and loudness options through the whole mesh: REST query parameters
(Envoy binds them to UploadVideoRequest's fields) and gRPC's first message
reach the converter via the job and the queue, and the MP3 downloaded is
measured from outside: its decoded length (FFmpeg, gapless info applied) and
ffmpeg's ebur128 loudness. The tus metadata, the CLI and the web page carry
the same options (tests/e2e/test_tus.py, test_cli.py, test_web.py)."""
from __future__ import annotations

import pytest

from testkit.clients import GrpcClient, RestClient
from testkit.media import decode_audio, ebur128, make_noise
from video2mp3.media.v1 import media_pb2


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    return make_noise(tmp_path_factory.mktemp("tools") / "noise.m4a", 12.0, level=0.05)


def test_rest_trim_and_loudness(mesh, noise):
    rest = RestClient(mesh.rest_base_url)
    rest.sign_up_and_login()
    r = rest.upload(noise, params={"filename": "noise.m4a", "start_ms": "1500", "end_ms": "9250",
                                   "loudness_lufs": "-16"})
    assert r.status_code == 200, r.text
    options = r.json()["options"]
    assert (options["start_ms"], options["end_ms"], options["loudness_lufs"]) == ("1500", "9250", -16)
    done = rest.wait(r.json()["job_id"])
    assert done["state"] == "JOB_STATE_DONE", done["error"]
    mp3 = rest.get(f"/v1/jobs/{done['job_id']}/mp3").content
    decoded, rate, _ = decode_audio(mp3)
    assert len(decoded) == 7750 * rate // 1000
    integrated, peak = ebur128(mp3)
    assert abs(integrated + 16) <= 1.0
    assert peak <= -1.0 + 0.05


def test_grpc_trim_of_a_streamed_upload(mesh, tmp_path):
    """Matroska is converted while it uploads (the growing reader cannot
    seek): the trim drops what comes before the start and stops at the end."""
    path = make_noise(tmp_path / "n.mkv", 8.0)
    client = GrpcClient(mesh.envoy_addr)
    client.sign_up_and_login()
    job = client.upload(path, filename="n.mkv", start_ms=2000, end_ms=5000, loudness_lufs=-14)
    assert (job.options.start_ms, job.options.end_ms, job.options.loudness_lufs) == (2000, 5000, -14)
    done = client.wait(job.job_id)
    assert done.state == media_pb2.JOB_STATE_DONE, done.error
    mp3 = client.download(job.job_id)
    decoded, rate, _ = decode_audio(mp3)
    assert len(decoded) == 3 * rate
    assert abs(ebur128(mp3)[0] + 14) <= 1.0


def test_rest_start_past_the_end_fails_the_job(mesh, noise):
    rest = RestClient(mesh.rest_base_url)
    rest.sign_up_and_login()
    r = rest.upload(noise, params={"filename": "noise.m4a", "start_ms": "60000"})
    assert r.status_code == 200, r.text
    done = rest.wait(r.json()["job_id"])
    assert done["state"] == "JOB_STATE_FAILED"
    assert "start_ms is past the end of the audio" in done["error"]
