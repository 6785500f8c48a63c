"""Upload atomicity and overload (issue #4): an upload that does not succeed
leaves nothing behind, and too much at once is refused at once.

Every case checks the same three things in MongoDB afterwards: no `videos`
file, no chunk of the upload (found by the chunks' files_id, which exist
only while the gateway writes them), and no job. "At once" is proven by
counting, never by timing: how many bytes the client had handed over when the
answer came back, or that other uploads were still held open meanwhile.
"""
from __future__ import annotations

import socket
import threading
import time
import uuid

import grpc
import jwt
import pytest
import requests
from google.api import httpbody_pb2

from localmesh.processes import wait_for
from testkit.clients import GrpcClient
from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.core.settings import MongoSettings
from video2mp3.media.v1 import media_pb2, media_pb2_grpc
from video2mp3.storage.mongo import Mongo

MiB = 1024 * 1024
PIECE = 64 * 1024
LIMIT = 1 * MiB       # MAX_UPLOAD_BYTES of the small-limit mesh
BIG = 256 * MiB       # what the client offers to send past it (generated lazily)
# What may be in flight when the refusal is sent: flow-control windows and
# buffers of the client library, Envoy and the server's transport. Measured
# here: about 12 MiB through Envoy, less direct.
IN_FLIGHT = 32 * MiB


# ----------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def mongo(mesh):
    m = Mongo(MongoSettings(uri=mesh.env["MONGO_URI"], timeout_ms=3000))
    yield m
    m.close()


class User:
    """A caller with a fresh identity, signed up and logged in at the stack's
    auth service directly (Envoy need not run). Only auth can sign tokens."""

    def __init__(self, stack):
        self.email = f"fault-{uuid.uuid4().hex[:12]}@example.com"
        client = GrpcClient(stack.env["AUTH_ADDR"])
        client.sign_up_and_login(self.email)
        client.close()
        self.token = client.token
        self.user_id = jwt.decode(self.token, options={"verify_signature": False})["sub"]
        self.md = [("authorization", f"Bearer {self.token}")]


def chunk_owners(mongo: Mongo) -> set:
    """files_id of every video chunk now stored (complete files or not)."""
    return set(mongo.db["videos.chunks"].distinct("files_id"))


def new_chunk_owners(mongo: Mongo, before: set) -> set:
    return chunk_owners(mongo) - before


def wait_new_chunks(mongo: Mongo, before: set, n: int = 1) -> set:
    """Block until the gateway has written chunks of `n` new uploads; return their ids."""
    found: set = set()

    def check():
        found.clear()
        found.update(new_chunk_owners(mongo, before))
        return len(found) >= n

    wait_for(f"{n} upload(s) to reach GridFS", check, timeout=30)
    return set(found)


def assert_nothing_left(mongo: Mongo, user: User, fids=()) -> None:
    """No job, no video file for `user`; no chunk of the uploads `fids` (waits
    for a cancelled upload's abort, which runs when the gateway notices)."""
    fids = list(fids)
    if fids:
        wait_for("the aborted upload's chunks to be deleted",
                 lambda: mongo.db["videos.chunks"].count_documents({"files_id": {"$in": fids}}) == 0,
                 timeout=30)
        assert mongo.db["videos.files"].count_documents({"_id": {"$in": fids}}) == 0
    assert mongo.db["videos.files"].count_documents({"metadata.user_id": user.user_id}) == 0
    assert mongo.jobs.count_documents({"user_id": user.user_id}) == 0


def first_message(filename: str, data: bytes = b"") -> media_pb2.UploadVideoRequest:
    msg = media_pb2.UploadVideoRequest(filename=filename)
    msg.body.content_type = "video/mp4"
    msg.body.data = data
    return msg


def piece(n: int = PIECE) -> media_pb2.UploadVideoRequest:
    return media_pb2.UploadVideoRequest(body=httpbody_pb2.HttpBody(data=b"\x5a" * n))


class Sender:
    """A client-stream body that counts what the gRPC library has taken from it
    and can be held open: `send` bytes, then wait for `gate` before the rest."""

    def __init__(self, total: int, send: int | None = None, filename: str = "clip.mp4"):
        self.total, self.send, self.filename = total, total if send is None else send, filename
        self.gate = threading.Event()
        self.consumed = 0
        self.exhausted = False

    def __iter__(self):
        yield first_message(self.filename)
        while self.consumed < self.total:
            if self.consumed >= self.send:
                self.gate.wait(60)
            self.consumed += PIECE
            yield piece()
        self.exhausted = True


def raw_http(addr: str, head: str) -> socket.socket:
    host, port = addr.split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(head.encode())
    return s


def upload_head(user: User, length: int, filename: str = "clip.mp4") -> str:
    return (f"POST /v1/videos?filename={filename} HTTP/1.1\r\nHost: video2mp3\r\n"
            f"Authorization: Bearer {user.token}\r\nContent-Type: video/mp4\r\n"
            f"Content-Length: {length}\r\n\r\n")


def send_until_answered(s: socket.socket, total: int) -> tuple[int, bytes]:
    """Send up to `total` body bytes, watching for a response after each piece.
    Returns (bytes sent when the response began, the response's first bytes)."""
    s.setblocking(False)
    sent, block = 0, b"\x5a" * PIECE
    while True:
        try:
            answer = s.recv(65536)
            if answer:
                return sent, answer
            return sent, b""  # closed without an answer
        except BlockingIOError:
            pass
        if sent < total:
            try:
                sent += s.send(block[: min(PIECE, total - sent)])
            except BlockingIOError:
                time.sleep(0.005)  # the peer is not reading: flow control
            except OSError:
                s.setblocking(True)
                s.settimeout(10)
                return sent, s.recv(65536)
        else:
            time.sleep(0.01)


# ------------------------------------------------------- cancel / disconnect

@pytest.mark.parametrize("route", ["envoy", "direct"])
def test_grpc_client_cancel_mid_stream_leaves_nothing(mesh, mongo, route):
    user = User(mesh)
    before = chunk_owners(mongo)
    body = Sender(total=8 * MiB, send=1 * MiB)
    with grpc.insecure_channel(mesh.envoy_addr if route == "envoy" else mesh.media_addr) as ch:
        call = media_pb2_grpc.MediaServiceStub(ch).UploadVideo.future(iter(body), metadata=user.md,
                                                                      timeout=60)
        fids = wait_new_chunks(mongo, before)  # the gateway is mid-upload
        call.cancel()
        body.gate.set()
        with pytest.raises(grpc.FutureCancelledError):
            call.result()
    assert not body.exhausted
    assert_nothing_left(mongo, user, fids)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_rest_client_disconnect_mid_body_leaves_nothing(mesh, mongo, how):
    user = User(mesh)
    before = chunk_owners(mongo)
    s = raw_http(mesh.envoy_addr, upload_head(user, 20 * MiB, "cut.mp4"))
    block = b"\x5a" * PIECE
    for _ in range(2 * MiB // PIECE):
        s.sendall(block)
    fids = wait_new_chunks(mongo, before)
    if how == "reset":  # RST instead of FIN, like a crashed client
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    assert_nothing_left(mongo, user, fids)


# ------------------------------------------------------------- size limit

@pytest.fixture
def small_limit_mesh(mesh, mesh_factory):
    # Tokens are checked against the session's auth service.
    return mesh_factory(services=("gateway", "envoy"), AUTH_ADDR=mesh.auth_addr, MAX_UPLOAD_BYTES=LIMIT)


@pytest.mark.parametrize("route", ["envoy", "direct"])
def test_grpc_upload_over_the_limit_is_refused_as_soon_as_it_crosses_it(small_limit_mesh, mongo, route):
    stack = small_limit_mesh
    user = User(stack)
    before = chunk_owners(mongo)
    body = Sender(total=BIG)
    with grpc.insecure_channel(stack.envoy_addr if route == "envoy" else stack.media_addr) as ch:
        with pytest.raises(grpc.RpcError) as e:
            media_pb2_grpc.MediaServiceStub(ch).UploadVideo(iter(body), metadata=user.md, timeout=60)
        consumed = body.consumed
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
    assert str(LIMIT) in e.value.details()
    # Answered while most of the body was still unsent: what the client had
    # handed over is the limit plus what flow-control windows let through.
    assert LIMIT < consumed < LIMIT + IN_FLIGHT, consumed
    assert not body.exhausted
    assert new_chunk_owners(mongo, before) == set()
    assert_nothing_left(mongo, user)


def test_rest_upload_over_the_limit_is_413_as_soon_as_it_crosses_it(small_limit_mesh, mongo):
    stack = small_limit_mesh
    user = User(stack)
    before = chunk_owners(mongo)
    s = raw_http(stack.envoy_addr, upload_head(user, BIG, "big.mp4"))
    try:
        sent, answer = send_until_answered(s, BIG)
    finally:
        s.close()
    status_line = answer.split(b"\r\n", 1)[0].decode()
    assert status_line.startswith("HTTP/1.1 413"), answer[:500]
    assert b"x-http-status" not in answer.lower()
    assert LIMIT < sent < LIMIT + IN_FLIGHT, sent
    assert new_chunk_owners(mongo, before) == set()
    assert_nothing_left(mongo, user)


# ---------------------------------------------------------------- overload

def test_uploads_past_max_concurrent_are_refused_at_once_while_the_others_finish(mesh, mesh_factory, mongo):
    stack = mesh_factory(services=("gateway", "envoy"), AUTH_ADDR=mesh.auth_addr, MAX_CONCURRENT_UPLOADS=2)
    user = User(stack)
    before = chunk_owners(mongo)
    ch = grpc.insecure_channel(stack.envoy_addr)
    media = media_pb2_grpc.MediaServiceStub(ch)
    # Two slow uploads take both slots: each sends 512 KiB, then waits.
    slow = [Sender(total=1 * MiB, send=512 * 1024, filename=f"slow{i}.mp4") for i in range(2)]
    calls = [media.UploadVideo.future(iter(b), metadata=user.md, timeout=120) for b in slow]
    try:
        wait_new_chunks(mongo, before, n=2)

        with pytest.raises(grpc.RpcError) as e:  # a third over gRPC
            media.UploadVideo(iter([first_message("third.mp4", b"x" * 1000)]), metadata=user.md,
                              timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        r = requests.post(f"{stack.rest_base_url}/v1/videos", params={"filename": "fourth.mp4"},
                          data=b"x" * 100_000, headers={"Authorization": f"Bearer {user.token}"},
                          timeout=30)
        assert r.status_code == 429, r.text
        assert "retry" in r.json()["message"]
        # Both refusals came while the first two were still held open.
        assert not any(c.done() for c in calls)
        assert all(b.consumed == 512 * 1024 for b in slow)
    finally:
        for b in slow:
            b.gate.set()
    jobs = [c.result(timeout=60) for c in calls]
    assert sorted(j.filename for j in jobs) == ["slow0.mp4", "slow1.mp4"]
    assert all(j.video_size_bytes == 1 * MiB for j in jobs)
    # The slots are free again.
    job = media.UploadVideo(iter([first_message("after.mp4", b"x" * 1000)]), metadata=user.md, timeout=30)
    assert job.state == media_pb2.JOB_STATE_QUEUED
    assert mongo.jobs.count_documents({"user_id": user.user_id}) == 3
    ch.close()


# ------------------------------------------------------------ message size

@pytest.mark.parametrize("route", ["envoy", "direct"])
def test_oversized_grpc_message_is_resource_exhausted_and_the_server_goes_on(mesh, mongo, route):
    user = User(mesh)
    before = chunk_owners(mongo)
    addr = mesh.envoy_addr if route == "envoy" else mesh.media_addr
    with grpc.insecure_channel(addr) as ch:
        media = media_pb2_grpc.MediaServiceStub(ch)
        # A normal first message (written to GridFS), then one of 5 MiB.
        msgs = [first_message("huge.mp4", b"\x00" * 300_000), piece(5 * MiB)]
        with pytest.raises(grpc.RpcError) as e:
            media.UploadVideo(iter(msgs), metadata=user.md, timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()

        auth_ch = ch if route == "envoy" else grpc.insecure_channel(mesh.auth_addr)
        with pytest.raises(grpc.RpcError) as e:
            auth_pb2_grpc.AuthServiceStub(auth_ch).SignUp(
                auth_pb2.SignUpRequest(email=user.email, password="p" * (5 * MiB)), timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
        if auth_ch is not ch:
            auth_ch.close()

        # Both servers keep serving.
        job = media.UploadVideo(iter([first_message("fine.mp4", b"\x00" * 1000)]),
                                metadata=user.md, timeout=30)
        assert job.video_size_bytes == 1000
    assert mongo.jobs.count_documents({"user_id": user.user_id}) == 1
    left = new_chunk_owners(mongo, before) - {mongo.jobs.find_one({"user_id": user.user_id})["video_fid"]}
    wait_for("the refused upload's chunks to go",
             lambda: not (new_chunk_owners(mongo, before) & left), timeout=30)


def test_rest_json_body_over_the_envoy_limit_is_413(mesh):
    r = requests.post(f"{mesh.rest_base_url}/v1/users",
                      json={"email": "big@example.com", "password": "p" * (2 * MiB)}, timeout=30)
    assert r.status_code == 413, r.text
    assert r.json()["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    r = requests.post(f"{mesh.rest_base_url}/v1/login",
                      json={"email": "big@example.com", "password": "small enough"}, timeout=30)
    assert r.status_code == 401, r.text


# ------------------------------------------------------- the chunked writer





# ------------------------------------------------------------------ janitor





def test_gateway_killed_mid_upload_leaves_orphans_that_the_janitor_removes(mesh, mesh_factory, mongo):
    age = 3
    stack = mesh_factory(services=("gateway",), AUTH_ADDR=mesh.auth_addr, ORPHAN_CHUNK_AGE_S=age,
                         JANITOR_INTERVAL_S=0.5)
    user = User(stack)
    before = chunk_owners(mongo)
    body = Sender(total=8 * MiB, send=1 * MiB, filename="killed.mp4")
    ch = grpc.insecure_channel(stack.media_addr)
    call = media_pb2_grpc.MediaServiceStub(ch).UploadVideo.future(iter(body), metadata=user.md,
                                                                  timeout=60)
    fids = wait_new_chunks(mongo, before)
    stack.kill("gateway")  # no chance to abort the GridFS upload
    body.gate.set()
    with pytest.raises(grpc.RpcError) as e:
        call.result(timeout=30)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    ch.close()
    orphans = {"files_id": {"$in": list(fids)}}
    assert mongo.db["videos.chunks"].count_documents(orphans) > 0  # left behind
    assert mongo.db["videos.files"].count_documents({"_id": {"$in": list(fids)}}) == 0

    stack.start_service("gateway")
    # Meanwhile an upload that keeps moving for longer than the age: never taken.
    steady = []

    def slow_messages():
        yield first_message("steady.mp4", b"\x01" * 300_000)
        end = time.monotonic() + age + 2
        while time.monotonic() < end:
            time.sleep(0.3)
            steady.append(1)
            yield media_pb2.UploadVideoRequest(body=httpbody_pb2.HttpBody(data=b"\x01" * 300_000))

    with grpc.insecure_channel(stack.media_addr) as ch:
        job = media_pb2_grpc.MediaServiceStub(ch).UploadVideo(slow_messages(), metadata=user.md,
                                                              timeout=60)
    assert job.video_size_bytes == 300_000 * (1 + len(steady))
    wait_for("the janitor to remove the orphan chunks",
             lambda: mongo.db["videos.chunks"].count_documents(orphans) == 0, timeout=30)
    # The steady upload's file is whole.
    doc = mongo.jobs.find_one({"_id": job.job_id})
    data = mongo.videos.open_download_stream(doc["video_fid"]).read()
    assert data == b"\x01" * job.video_size_bytes
