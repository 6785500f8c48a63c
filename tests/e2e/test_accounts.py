"""Accounts: deleting your own (with everything you own), sign-up switched off,
and the admin commands `python -m video2mp3.auth users create|list|delete`."""
from __future__ import annotations

import subprocess
import sys

import grpc
import jwt
import pytest
import requests

import testkit
from localmesh.processes import wait_for
from testkit.clients import GrpcClient, RestClient, unique_email
from testkit.media import make_text_file
from testkit.status import reason
from video2mp3.auth.v1 import auth_pb2
from video2mp3.core import tokens
from video2mp3.core.settings import MongoSettings
from video2mp3.media.v1 import media_pb2
from video2mp3.storage.mongo import Mongo

ROOT = testkit.ROOT
PASSWORD = "correct horse 1"


@pytest.fixture(scope="module")
def mongo(mesh):
    m = Mongo(MongoSettings(uri=mesh.env["MONGO_URI"], timeout_ms=3000))
    yield m
    m.close()




def owned(mongo: Mongo, uid: str) -> tuple[int, int, int]:
    """(jobs, videos, MP3s) of the user in MongoDB."""
    return (mongo.jobs.count_documents({"user_id": uid}),
            mongo.db["videos.files"].count_documents({"metadata.user_id": uid}),
            mongo.db["mp3s.files"].count_documents({"metadata.user_id": uid}))


def test_delete_me_removes_the_user_and_everything_they_own(mesh_factory, mongo, clip, tmp_path):
    # Videos kept after their job ends (VIDEO_RETENTION), so there are some to delete.
    mesh = mesh_factory(VIDEO_RETENTION="3600")
    client = GrpcClient(mesh.envoy_addr)
    email = client.sign_up_and_login()
    uid = jwt.decode(client.token, options={"verify_signature": False})["sub"]
    done = client.wait(client.upload(clip).job_id)
    assert done.state == media_pb2.JOB_STATE_DONE
    client.upload(make_text_file(tmp_path / "t.mp4"))
    other = GrpcClient(mesh.envoy_addr)
    other.sign_up_and_login()
    other_uid = jwt.decode(other.token, options={"verify_signature": False})["sub"]
    other.upload(make_text_file(tmp_path / "o.mp4"))
    wait_for("both jobs of the user to be final",
             lambda: all(j.state in (media_pb2.JOB_STATE_DONE, media_pb2.JOB_STATE_FAILED)
                         for j in client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=client.md,
                                                        timeout=10).jobs), timeout=60)
    assert owned(mongo, uid) == (2, 2, 1)
    other_before = owned(mongo, other_uid)

    r = requests.delete(f"{mesh.rest_base_url}/v1/me", headers={"Authorization": f"Bearer {client.token}"},
                        timeout=60)
    assert (r.status_code, r.json()) == (200, {})
    assert owned(mongo, uid) == (0, 0, 0)
    assert owned(mongo, other_uid) == other_before  # nobody else's
    # Their token stops working, everywhere; they cannot log in any more.
    for call in (lambda: client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=client.md, timeout=10),
                 lambda: client.auth.GetMe(auth_pb2.GetMeRequest(), metadata=client.md, timeout=10)):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert e.value.details() == tokens.PUBLIC_MESSAGE
        assert reason(e.value) == "USER_DELETED"
    with pytest.raises(grpc.RpcError) as e:
        client.auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD), timeout=20)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The email is free again.
    RestClient(mesh.rest_base_url).sign_up_and_login(email, PASSWORD)


def test_delete_me_while_the_media_service_is_down_keeps_the_account_to_retry(mesh, mesh_factory, mongo,
                                                                             tmp_path):
    stack = mesh_factory(services=("auth", "gateway", "envoy"))
    client = GrpcClient(stack.envoy_addr)
    client.sign_up_and_login()
    uid = jwt.decode(client.token, options={"verify_signature": False})["sub"]
    client.upload(make_text_file(tmp_path / "t.mp4"))
    stack.stop_service("gateway")
    with pytest.raises(grpc.RpcError) as e:
        client.auth.DeleteMe(auth_pb2.DeleteMeRequest(), metadata=client.md, timeout=90)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "try again" in e.value.details()
    assert reason(e.value) == "MEDIA_UNAVAILABLE"
    assert client.auth.GetMe(auth_pb2.GetMeRequest(), metadata=client.md, timeout=10).id == uid
    assert owned(mongo, uid)[0] == 1
    stack.start_service("gateway")
    # "Try again shortly": a retry succeeds once the Media service is back.
    wait_for("DeleteMe to succeed", lambda: client.auth.DeleteMe(auth_pb2.DeleteMeRequest(), metadata=client.md,
                                                                  timeout=90) is not None, timeout=20)
    assert owned(mongo, uid) == (0, 0, 0)


def test_sign_up_can_be_switched_off(mesh_factory):
    stack = mesh_factory(services=("auth", "envoy"), ALLOW_SIGNUP="false")
    r = requests.post(f"{stack.rest_base_url}/v1/users", json={"email": unique_email(), "password": PASSWORD},
                      timeout=20)
    assert r.status_code == 403
    assert "sign-up is switched off" in r.json()["message"]
    assert "administrator" in r.json()["message"]
    assert r.json()["details"][0]["reason"] == "SIGNUP_DISABLED"
    with pytest.raises(grpc.RpcError) as e:
        GrpcClient(stack.envoy_addr).auth.SignUp(auth_pb2.SignUpRequest(email=unique_email(), password=PASSWORD),
                                                 timeout=20)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(e.value) == "SIGNUP_DISABLED"


def admin(env: dict, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "video2mp3.auth", "users", *args], env=env, cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_admin_creates_lists_and_deletes_users(mesh, mongo, tmp_path):
    email = unique_email("admin")
    r = admin(mesh.env, "create", email, stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    assert admin(mesh.env, "create", email, stdin=PASSWORD + "\n").returncode == 1  # taken
    assert admin(mesh.env, "create", "not-an-email", stdin=PASSWORD + "\n").returncode == 2
    assert email in admin(mesh.env, "list").stdout

    client = GrpcClient(mesh.envoy_addr)
    client.token = client.auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD),
                                     timeout=20).access_token
    uid = jwt.decode(client.token, options={"verify_signature": False})["sub"]
    client.upload(make_text_file(tmp_path / "t.mp4"))
    assert owned(mongo, uid)[0] == 1

    r = admin(mesh.env, "delete", email)
    assert r.returncode == 0, r.stderr
    assert owned(mongo, uid) == (0, 0, 0)
    assert email not in admin(mesh.env, "list").stdout
    assert admin(mesh.env, "delete", email).returncode == 1
