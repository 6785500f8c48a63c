"""Limits per job and quotas per user, against the real mesh through Envoy:
refused at upload where the bytes declare the length (413 / 429 with the
google.rpc details), FAILED by the converter where only decoding tells, and
nothing kept either way; usage over REST, the CLI and the metrics.

The mesh here has low limits (60 s of audio, a 1 MiB MP3) so that files of
seconds break them; the 20-hour file is also tried against the session's
mesh, with the defaults."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from testkit import prom
from testkit.clients import RestClient, unique_email
from testkit.faults import user_client
from testkit.media import make_media, make_silence_ogg
from testkit.status import details, rest_details

MAX_AUDIO_S = 60
CLI = str(Path(sys.executable).with_name("video2mp3"))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("limits")
    return {
        # Each declares its length where the gateway can read it.
        "long_wav": make_media(d / "long.wav", video_codec=None, audio_codec="pcm_s16le", duration=90,
                               sample_rate=8000, layout="mono"),
        "long_mp4_index_last": make_media(d / "long.mp4", video_codec=None, duration=90, sample_rate=8000,
                                          layout="mono"),
        "wav_50s": make_media(d / "w50.wav", video_codec=None, audio_codec="pcm_s16le", duration=50,
                              sample_rate=8000, layout="mono"),
        "wav_20s": make_media(d / "w20.wav", video_codec=None, audio_codec="pcm_s16le", duration=20,
                              sample_rate=8000, layout="mono"),
        # ADTS AAC declares nothing: only the converter's count tells.
        "long_adts": make_media(d / "long.aac", container="adts", video_codec=None, duration=90,
                                sample_rate=8000, layout="mono"),
        "adts_50s": make_media(d / "a50.aac", container="adts", video_codec=None, duration=50, sample_rate=44100),
        "ogg_20h": make_silence_ogg(d / "silence-20h.ogg", hours=20),
    }


@pytest.fixture(scope="module")
def limited(module_mesh_factory):
    return module_mesh_factory(MAX_AUDIO_DURATION_S=MAX_AUDIO_S, MAX_MP3_MB=1)


def rest_user(stack) -> RestClient:
    client = RestClient(stack.rest_base_url)
    client.sign_up_and_login(unique_email("limits"))
    return client


def refused(r, status: int, reason: str, *, retry: bool) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    info = rest_details(body)
    assert info["ErrorInfo"]["reason"] == reason, body
    assert ("RetryInfo" in info) == retry, body
    return body


def nothing_kept(store_db, client: RestClient) -> None:
    assert client.get("/v1/jobs").json().get("jobs", []) == []
    user_id = client.get("/v1/me").json()["id"]
    for bucket in ("videos", "mp3s"):
        assert store_db[f"{bucket}.files"].count_documents({"metadata.user_id": user_id}) == 0


def test_declared_duration_over_the_limit_is_refused_at_upload(limited, media, store):
    client = rest_user(limited)
    for name in ("long_wav", "long_mp4_index_last", "ogg_20h"):
        body = refused(client.upload(media[name]), 413, "AUDIO_TOO_LONG", retry=False)
        assert "MAX_AUDIO_DURATION_S" in body["message"], body
        assert "1 min" in body["message"], body
    # A resumable (tus) upload: its last PATCH is refused, and the upload is gone.
    data = Path(media["long_wav"]).read_bytes()
    tus = {**client.headers(), "Tus-Resumable": "1.0.0"}
    r = client.s.post(f"{client.base}/v1/uploads", headers={**tus, "Upload-Length": str(len(data))}, timeout=30)
    assert r.status_code == 201, r.text
    url = f"{client.base}{r.headers['Location']}"
    r = client.s.patch(url, data=data, timeout=60, headers={
        **tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    refused(r, 413, "AUDIO_TOO_LONG", retry=False)
    assert client.s.head(url, headers=tus, timeout=30).status_code == 404
    nothing_kept(store.db, client)
    # The same over gRPC: RESOURCE_EXHAUSTED.
    grpc_client = user_client(limited, limited.envoy_addr)
    with pytest.raises(grpc.RpcError) as e:
        grpc_client.upload(media["long_wav"], filename="long.wav")
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(e.value)["ErrorInfo"].reason == "AUDIO_TOO_LONG"


def test_mp3_size_declared_too_big_is_refused_at_upload(limited, media, store):
    client = rest_user(limited)
    # 50 s at 320 kbps is 2 MB, over the 1 MiB limit.
    params = {"filename": "w.wav", "bitrate_kbps": 320, "sample_rate_hz": 44100}
    body = refused(client.upload(media["wav_50s"], params=params),
                   413, "MP3_TOO_LARGE", retry=False)
    assert "MAX_MP3_MB" in body["message"], body
    nothing_kept(store.db, client)


def test_limits_the_converter_finds_fail_the_job_and_keep_nothing(limited, media, store):
    client = rest_user(limited)
    r = client.upload(media["long_adts"])
    assert r.status_code == 200, r.text
    job = client.wait(r.json()["job_id"])
    assert job["state"] == "JOB_STATE_FAILED", job
    assert "MAX_AUDIO_DURATION_S" in job["error"], job
    r = client.upload(media["adts_50s"], params={"filename": "a.aac", "bitrate_kbps": 320})
    assert r.status_code == 200, r.text
    job = client.wait(r.json()["job_id"])
    assert job["state"] == "JOB_STATE_FAILED", job
    assert "MAX_MP3_MB" in job["error"], job
    user_id = client.get("/v1/me").json()["id"]
    for bucket in ("videos", "mp3s"):
        assert store.db[f"{bucket}.files"].count_documents({"metadata.user_id": user_id}) == 0, bucket
    scrape = prom.scrape(limited.metrics_urls["converter"])
    assert scrape.value("video2mp3_limit_refusals_total", kind="audio_duration", where="conversion") >= 1
    assert scrape.value("video2mp3_limit_refusals_total", kind="mp3_size", where="conversion") >= 1


def set_quota(stack, email: str, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "video2mp3.gateway", "quota", "set", email, *args],
                       env=stack.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_minutes_quota(limited, media):
    client = RestClient(limited.rest_base_url)
    email = client.sign_up_and_login(unique_email("minutes"))
    assert "1 min per 24 h (set for this user)" in set_quota(limited, email, "--minutes-per-day", "1")
    r = client.upload(media["wav_50s"], params={"filename": "w.wav", "bitrate_kbps": 64})
    assert r.status_code == 200, r.text
    assert client.wait(r.json()["job_id"])["state"] == "JOB_STATE_DONE"
    # 50 s converted + 20 s declared > 60 s: waiting helps (the 50 s leave the window in a day).
    body = refused(client.upload(media["wav_20s"]), 429, "QUOTA_EXCEEDED", retry=True)
    assert "50 s" in body["message"]
    assert "1 min allowed" in body["message"]
    assert "frees up at" in body["message"]
    usage = client.get("/v1/usage").json()
    assert usage["minutes_limit"] == 1, usage
    assert 0.8 < usage["minutes_used"] < 0.9, usage
    assert "minutes_free_time" in usage, usage
    assert usage["max_audio_minutes_per_job"] == 1, usage
    scrape = prom.scrape(limited.metrics_urls["gateway"])
    assert scrape.value("video2mp3_limit_refusals_total", kind="minutes_quota", where="upload") >= 1
    # Back to the defaults: the next upload fits again.
    reset = subprocess.run([sys.executable, "-m", "video2mp3.gateway", "quota", "reset", email],
                           env=limited.env, capture_output=True, text=True, timeout=60)
    assert "600 min per 24 h (the defaults)" in reset.stdout, reset.stdout + reset.stderr
    assert client.upload(media["wav_20s"]).status_code == 200


def test_storage_quota(limited, media, store):
    client = RestClient(limited.rest_base_url)
    email = client.sign_up_and_login(unique_email("storage"))
    set_quota(limited, email, "--storage-mb", "1")
    # The 50 s WAV is 800 kB: it fits, and its MP3 (400 kB: 64 kbps, the most MP3 has at 8 kHz) is then held.
    r = client.upload(media["wav_50s"])
    assert r.status_code == 200, r.text
    assert client.wait(r.json()["job_id"])["state"] == "JOB_STATE_DONE"
    # Not twice: refused while it arrives; waiting helps (the MP3 expires).
    body = refused(client.upload(media["wav_50s"]), 429, "QUOTA_EXCEEDED", retry=True)
    assert "storage quota" in body["message"], body
    assert "of your 1.0 MB" in body["message"], body
    usage = client.get("/v1/usage").json()
    assert 300_000 < int(usage["storage_used_bytes"]) < 2**20, usage
    assert int(usage["storage_limit_bytes"]) == 2**20, usage
    assert "storage_free_time" in usage, usage
    # A resumable upload says its length first: refused at its creation.
    r = client.s.post(f"{client.base}/v1/uploads", timeout=30,
                      headers={**client.headers(), "Tus-Resumable": "1.0.0", "Upload-Length": "800000"})
    refused(r, 429, "QUOTA_EXCEEDED", retry=True)
    # Deleting the job frees it at once.
    job_id = client.get("/v1/jobs").json()["jobs"][0]["job_id"]
    assert client.s.delete(f"{client.base}/v1/jobs/{job_id}", headers=client.headers()).status_code == 200
    r = client.upload(media["wav_50s"])
    assert r.status_code == 200, r.text


def test_cli_usage(limited, media, tmp_path):
    env = {**os.environ, "VIDEO2MP3_SERVER": limited.envoy_addr, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    email = unique_email("cliusage")
    run = lambda *a, stdin="": subprocess.run([CLI, *a], env=env, input=stdin, capture_output=True,  # noqa: E731
                                              text=True, timeout=60)
    assert run("signup", "--email", email, "--password-stdin", stdin="correct horse 1\n").returncode == 0
    assert run("login", "--email", email, "--password-stdin", stdin="correct horse 1\n").returncode == 0
    r = run("usage")
    assert r.returncode == 0, r.stderr
    assert "storage: 0 B of 5.4 GB" in r.stdout, r.stdout
    assert "minutes: 0 min of 600 min per 24 h" in r.stdout, r.stdout
    assert "at most 1 min of audio" in r.stdout, r.stdout
    # A refusal's message reaches the user as the server wrote it.
    r = run("convert", media["long_wav"], "-o", str(tmp_path / "out"))
    assert r.returncode != 0, r.stdout
    said = r.stdout + r.stderr  # convert reports each file on its own line
    assert "the audio is too long: the file declares 1 min 30 s" in said, said
    assert "(MAX_AUDIO_DURATION_S)" in said, said


def test_twenty_hours_refused_with_the_defaults(mesh, media):
    """The issue's file, on the session mesh's default limits (3 hours)."""
    client = rest_user(mesh)
    body = refused(client.upload(media["ogg_20h"]), 413, "AUDIO_TOO_LONG", retry=False)
    assert "20 h" in body["message"], body
    assert "3 h" in body["message"], body
    assert client.get("/v1/jobs").json().get("jobs", []) == []


def test_minutes_declared_by_jobs_waiting_count(module_mesh_factory, media):
    """No converter: what queued jobs declare counts, so a burst cannot overshoot the quota."""
    stack = module_mesh_factory(services=("auth", "gateway", "envoy"))
    client = RestClient(stack.rest_base_url)
    email = client.sign_up_and_login(unique_email("pending"))
    set_quota(stack, email, "--minutes-per-day", "1")
    r = client.upload(media["wav_50s"])  # a WAV streams in: its job was made early
    assert r.status_code == 200, r.text
    body = refused(client.upload(media["wav_20s"]), 429, "QUOTA_EXCEEDED", retry=False)
    assert "jobs waiting declare 50 s more" in body["message"], body
    assert "once the jobs waiting are converted" in body["message"], body
    usage = client.get("/v1/usage").json()
    assert usage["minutes_used"] == 0, usage
    assert 0.8 < usage["minutes_pending"] < 0.9, usage
