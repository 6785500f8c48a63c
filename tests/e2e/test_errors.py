"""Bad input gets the right status (gRPC and mapped HTTP), a message a person
understands, and leaves nothing behind."""
from __future__ import annotations

import time

import grpc
import jwt
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from testkit.clients import GrpcClient, RestClient, unique_email
from testkit.media import make_media, make_text_file
from testkit.status import details, rest_details
from testkit.testbed import signing_key
from video2mp3.auth.keys import generate
from video2mp3.auth.v1 import auth_pb2
from video2mp3.core import tokens
from video2mp3.core.settings import MongoSettings
from video2mp3.media.v1 import media_pb2
from video2mp3.storage.mongo import Mongo


@pytest.fixture(scope="module")
def grpc_user(mesh):
    client = GrpcClient(mesh.envoy_addr)
    client.sign_up_and_login()
    yield client
    client.close()


@pytest.fixture(scope="module")
def rest_user(mesh):
    rest = RestClient(mesh.rest_base_url)
    rest.sign_up_and_login()
    return rest


@pytest.fixture(scope="module")
def mongo(mesh):
    m = Mongo(MongoSettings(uri=mesh.env["MONGO_URI"], timeout_ms=3000))
    yield m
    m.close()


def rich_details(err: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.BadRequest]:
    """The ErrorInfo and BadRequest (empty if absent) of a failed call."""
    status = rpc_status.from_call(err)
    assert status is not None
    assert status.message == err.details()
    found = details(status)
    return found["ErrorInfo"], found.get("BadRequest", error_details_pb2.BadRequest())


def user_id(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["sub"]


def stored_for(mongo: Mongo, uid: str) -> tuple[int, int, int]:
    """(jobs, video files, video chunks) the user has in MongoDB."""
    fids = [f["_id"] for f in mongo.db["videos.files"].find({"metadata.user_id": uid})]
    return (mongo.jobs.count_documents({"user_id": uid}), len(fids),
            mongo.db["videos.chunks"].count_documents({"files_id": {"$in": fids}}))


def orphan_chunks(mongo: Mongo) -> int:
    """Video chunks whose file was never completed (no files document)."""
    fids = mongo.db["videos.files"].distinct("_id")
    return mongo.db["videos.chunks"].count_documents({"files_id": {"$nin": fids}})


def test_wrong_password_and_unknown_email_look_the_same(mesh, grpc_user):
    email = unique_email()
    grpc_user.auth.SignUp(auth_pb2.SignUpRequest(email=email, password="right password"), timeout=20)
    errors = []
    for who, pw in ((email, "wrong password"), (unique_email(), "right password")):
        with pytest.raises(grpc.RpcError) as e:
            grpc_user.auth.Login(auth_pb2.LoginRequest(email=who, password=pw), timeout=20)
        errors.append((e.value.code(), e.value.details()))
    assert errors[0] == errors[1]
    assert errors[0][0] == grpc.StatusCode.UNAUTHENTICATED

    r = RestClient(mesh.rest_base_url).s.post(f"{mesh.rest_base_url}/v1/login",
                                              json={"email": email, "password": "nope nope"}, timeout=20)
    assert r.status_code == 401
    assert r.json()["message"] == errors[0][1]


def bad_tokens(env: dict) -> dict[str, str | None]:
    key, other = signing_key(env), generate()
    return {
        "missing": None,
        "malformed": "not-a-jwt",
        "expired": tokens.issue(key.private_key, key.kid, "1", "a@example.com", ttl_seconds=60,
                                now=time.time() - 3600),
        # Another key under the mesh's kid.
        "wrongly signed": tokens.issue(other.private_key, key.kid, "1", "a@example.com", ttl_seconds=600),
    }


@pytest.mark.parametrize("kind", ["missing", "malformed", "expired", "wrongly signed"])
def test_bad_tokens_are_unauthenticated(mesh, grpc_user, kind):
    token = bad_tokens(mesh.env)[kind]
    md = [] if token is None else [("authorization", f"Bearer {token}")]
    for call in (lambda: grpc_user.media.GetJob(media_pb2.GetJobRequest(job_id="x"), metadata=md, timeout=10),
                 lambda: grpc_user.auth.GetMe(auth_pb2.GetMeRequest(), metadata=md, timeout=10),
                 lambda: grpc_user.media.ListJobs(media_pb2.ListJobsRequest(), metadata=md, timeout=10)):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert e.value.details() == tokens.PUBLIC_MESSAGE
        assert rich_details(e.value)[0].reason == "TOKEN_INVALID"

    rest = RestClient(mesh.rest_base_url)
    for path in ("/v1/me", "/v1/jobs/x", "/v1/jobs"):
        r = rest.get(path, token=token or "")
        assert r.status_code == 401, (path, r.text)


def test_text_file_fails_with_a_reason_and_the_worker_goes_on(grpc_user, tmp_path):
    bad = grpc_user.upload(make_text_file(tmp_path / "notes.mp4"), filename="notes.mp4")
    failed = grpc_user.wait(bad.job_id)
    assert failed.state == media_pb2.JOB_STATE_FAILED
    assert "not a media file" in failed.error

    # Download of a job that is not DONE.
    with pytest.raises(grpc.RpcError) as e:
        grpc_user.download(bad.job_id)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "FAILED" in e.value.details()

    good = make_media(tmp_path / "ok.mp4", container="mp4", video_codec="mpeg4", duration=1.0)
    assert grpc_user.wait(grpc_user.upload(good).job_id).state == media_pb2.JOB_STATE_DONE


def test_another_users_job_is_not_found(mesh, grpc_user, rest_user, tmp_path):
    job = grpc_user.upload(make_text_file(tmp_path / "mine.mp4"))
    stranger = GrpcClient(mesh.envoy_addr)
    stranger.sign_up_and_login()
    for call in (lambda: stranger.job(job.job_id), lambda: stranger.download(job.job_id)):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert rest_user.get(f"/v1/jobs/{job.job_id}").status_code == 404
    assert rest_user.get(f"/v1/jobs/{job.job_id}/mp3").status_code == 404


def test_empty_upload_is_invalid_and_stores_nothing(mesh, grpc_user, rest_user, mongo, tmp_path):
    before = stored_for(mongo, user_id(grpc_user.token))
    with pytest.raises(grpc.RpcError) as e:
        grpc_user.upload(b"", filename="empty.mp4")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty" in e.value.details()
    assert stored_for(mongo, user_id(grpc_user.token)) == before
    assert orphan_chunks(mongo) == 0

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    r = rest_user.upload(empty)
    assert r.status_code == 400, r.text
    assert "empty" in r.json()["message"]


@pytest.mark.parametrize(("options", "field"), [
    ({"bitrate_kbps": 100}, "bitrate_kbps"),
    ({"vbr_quality": 12}, "vbr_quality"),
    ({"channels": 6}, "channels"),
    ({"sample_rate_hz": 96000}, "sample_rate_hz"),
    ({"start_ms": -1}, "start_ms"),
    ({"start_ms": 5000, "end_ms": 2000}, "end_ms"),
    ({"loudness_lufs": -3.5}, "loudness_lufs"),
    ({"loudness_lufs": -90}, "loudness_lufs"),
])
def test_invalid_options_name_the_field(mesh, grpc_user, rest_user, mongo, tmp_path, options, field):
    before = stored_for(mongo, user_id(grpc_user.token))
    with pytest.raises(grpc.RpcError) as e:
        grpc_user.upload(b"\x00" * 1000, **options)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in e.value.details()
    info, bad = rich_details(e.value)
    assert (info.reason, info.domain) == ("INVALID_OPTIONS", "video2mp3")
    assert [v.field for v in bad.field_violations] == [field]
    assert field in bad.field_violations[0].description
    assert stored_for(mongo, user_id(grpc_user.token)) == before
    assert orphan_chunks(mongo) == 0

    video = make_media(tmp_path / "v.mp4", duration=0.5)
    r = rest_user.upload(video, params={"filename": "v.mp4", **{k: str(v) for k, v in options.items()}})
    assert r.status_code == 400
    assert field in r.json()["message"]
    details = rest_details(r.json())
    assert details["ErrorInfo"]["reason"] == "INVALID_OPTIONS", r.text
    assert details["ErrorInfo"]["domain"] == "video2mp3"
    violations = details["BadRequest"]["field_violations"]
    assert [v["field"] for v in violations] == [field], r.text
