"""Outages of MongoDB, MySQL and RabbitMQ (issue #4, "Outages" and "Publish
safety"), injected with a TcpProxy between one mesh and the real server: the
machine's shared MariaDB and RabbitMQ keep running for everybody else.

What must hold: while a dependency is down, RPCs that need it fail fast with
UNAVAILABLE (a 10 s deadline must never be what ends them), the /health
endpoint names it, and once it is back every service carries on by itself:
no restart, no job lost, no MP3 made twice.
"""
from __future__ import annotations

import grpc
import pytest

from localmesh.processes import wait_for
from testkit.clients import GrpcClient, RestClient, unique_email, upload_messages
from testkit.faults import SLOW_OPTIONS, make_long_audio, user_client
from testkit.tcp_proxy import TcpProxy
from video2mp3.auth.v1 import auth_pb2
from video2mp3.media.v1 import media_pb2

FAST = 10  # seconds: the deadline an RPC must beat with an answer while a dependency is down


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory):
    return make_long_audio(tmp_path_factory.mktemp("long") / "long.flac", minutes=10)


@pytest.fixture
def rabbit_proxy(rabbitmq_server):
    with TcpProxy(rabbitmq_server["RABBITMQ_HOST"], int(rabbitmq_server["RABBITMQ_PORT"])) as p:
        yield p


@pytest.fixture
def mongo_proxy(mongo_server):
    with TcpProxy(mongo_server.host, mongo_server.port) as p:
        yield p


@pytest.fixture
def mysql_proxy(mysql_server):
    with TcpProxy(mysql_server["host"], mysql_server["port"]) as p:
        yield p


def unavailable(call, *args, **kwargs) -> grpc.RpcError:
    """Run an RPC that must fail with UNAVAILABLE before its FAST deadline."""
    def read_all():
        result = call(*args, timeout=FAST, **kwargs)
        if hasattr(result, "__next__"):  # a server stream: read it to the end
            list(result)

    with pytest.raises(grpc.RpcError) as info:
        read_all()
    err = info.value
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    return err


def health(stack) -> dict:
    r = RestClient(stack.rest_base_url).get("/health", token="")
    body = r.json()
    # 503 whenever something is down, with the same body.
    assert r.status_code == (200 if body["status"] == "healthy" else 503), r.text
    return body


def wait_health(stack, dependency: str, prefix: str, timeout: float = 30) -> dict:
    return wait_for(f"/health to say {dependency} is {prefix}...",
                      lambda: (h := health(stack))[dependency].startswith(prefix) and h,
                      timeout=timeout, interval=0.3)


# -- RabbitMQ ----------------------------------------------------------------------

def test_rabbitmq_cut_keeps_the_upload_and_publishes_it_once_back(
        rabbit_proxy, mesh_factory, store, clip, long_audio):
    """The gateway records the job before publishing (an outbox): with RabbitMQ
    unreachable the upload still succeeds, the job waits unpublished, and the
    re-publisher delivers it once RabbitMQ is back; the converter reconnects."""
    stack = mesh_factory(RABBITMQ_PORT=rabbit_proxy.port, REPUBLISH_INTERVAL_S=1)
    client = user_client(stack, stack.envoy_addr)
    inflight = client.upload(long_audio, filename="inflight.flac", timeout=FAST, **SLOW_OPTIONS)
    store.wait_job(inflight.job_id, lambda j: j["state"] == "PROCESSING" and 0 < j["progress"] < 50,
                   "to be converting")

    rabbit_proxy.cut()  # the converter loses the connection its unacked task came on
    job = client.upload(clip, filename="outbox.mp4", timeout=FAST)
    assert job.state == media_pb2.JOB_STATE_QUEUED
    assert store.job(job.job_id)["published"] is False
    h = wait_health(stack, "rabbitmq", "disconnected: ")
    assert h["status"] == "unhealthy"
    assert h["mongodb"] == h["mysql"] == "connected"
    assert client.job(job.job_id).state == media_pb2.JOB_STATE_QUEUED

    rabbit_proxy.restore()
    done = client.wait(job.job_id, timeout=60)
    assert done.state == media_pb2.JOB_STATE_DONE, done.error
    store.assert_one_mp3(job.job_id)
    # The task that was in flight is redelivered on the new connection and
    # acked as a duplicate: converted once.
    assert client.wait(inflight.job_id, timeout=60).state == media_pb2.JOB_STATE_DONE
    assert store.assert_one_mp3(inflight.job_id)["attempts"] == 1
    assert store.job(job.job_id)["published"] is True
    wait_health(stack, "rabbitmq", "connected")

    # Both sides carry on over their new connections.
    again = client.upload(clip, filename="after.mp4", timeout=FAST)
    assert client.wait(again.job_id, timeout=60).state == media_pb2.JOB_STATE_DONE
    store.assert_one_mp3(again.job_id)


def test_rabbitmq_that_never_confirms_does_not_hold_uploads(rabbit_proxy, mesh_factory, store, clip):
    """A broker that takes the bytes and never answers (no confirm, no error):
    the upload still answers before its deadline, and the job is delivered and
    converted once, however many times it ends up published."""
    stack = mesh_factory(RABBITMQ_PORT=rabbit_proxy.port, REPUBLISH_INTERVAL_S=1)
    client = user_client(stack, stack.envoy_addr)
    warm = client.upload(clip, filename="warm.mp4", timeout=FAST)  # connections open
    assert client.wait(warm.job_id, timeout=60).state == media_pb2.JOB_STATE_DONE

    rabbit_proxy.stall()
    job = client.upload(clip, filename="stalled.mp4", timeout=FAST)
    assert job.state == media_pb2.JOB_STATE_QUEUED
    assert store.job(job.job_id)["published"] is False
    wait_health(stack, "rabbitmq", "disconnected: ")
    assert client.job(job.job_id).state == media_pb2.JOB_STATE_QUEUED

    rabbit_proxy.restore()
    assert client.wait(job.job_id, timeout=90).state == media_pb2.JOB_STATE_DONE
    store.assert_one_mp3(job.job_id)
    wait_health(stack, "rabbitmq", "connected")


# -- MongoDB ---------------------------------------------------------------------

def test_health_is_503_over_rest_while_mongodb_is_cut(mongo_proxy, mesh_factory, mongo_server):
    """REST /health says 503 with the usual body; gRPC GetHealth still answers OK."""
    stack = mesh_factory(services=("auth", "gateway", "envoy"), MONGO_URI=mongo_server.via(*mongo_proxy.address))
    wait_health(stack, "status", "healthy")
    mongo_proxy.cut()
    # (A Response is falsy when not ok, hence the list.)
    [r] = wait_for("/health to answer 503", lambda: (x := RestClient(stack.rest_base_url).get(
        "/health", token="")).status_code == 503 and [x], timeout=30, interval=0.3)
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"status", "mongodb", "rabbitmq", "mysql"}
    assert body["status"] == "unhealthy"
    assert body["mongodb"].startswith("disconnected: ")
    assert "x-http-status" not in r.headers
    grpc_answer = GrpcClient(stack.envoy_addr).media.GetHealth(media_pb2.GetHealthRequest(), timeout=FAST)
    assert grpc_answer.status == "unhealthy"
    mongo_proxy.restore()
    wait_health(stack, "status", "healthy")

def test_mongodb_cut_fails_fast_and_everything_recovers(
        mongo_proxy, mesh_factory, mongo_server, store, clip, long_audio):
    """The gateway answers UNAVAILABLE at once for everything that needs
    MongoDB; the converter, cut mid-conversion, retries the job in place and
    finishes it once MongoDB is back. Nobody is restarted."""
    stack = mesh_factory(MONGO_URI=mongo_server.via(*mongo_proxy.address),
                         CONVERTER_LEASE_S=2, CONVERTER_RETRY_DELAY_S=0.5)
    client = user_client(stack, stack.envoy_addr)
    done = client.upload(clip, filename="before.mp4", timeout=FAST)
    assert client.wait(done.job_id, timeout=60).state == media_pb2.JOB_STATE_DONE
    job = client.upload(long_audio, filename="long.flac", timeout=FAST, **SLOW_OPTIONS)
    interrupted = store.wait_job(job.job_id, lambda j: j["state"] == "PROCESSING" and 0 < j["progress"] < 80,
                                 "to be converting")["current_mp3_fid"]

    mongo_proxy.cut()
    unavailable(client.media.GetJob, media_pb2.GetJobRequest(job_id=job.job_id), metadata=client.md)
    unavailable(client.media.ListJobs, media_pb2.ListJobsRequest(), metadata=client.md)
    unavailable(client.media.DownloadMp3, media_pb2.DownloadMp3Request(job_id=done.job_id), metadata=client.md)
    unavailable(client.media.UploadVideo, upload_messages(clip, "during.mp4"), metadata=client.md)
    h = wait_health(stack, "mongodb", "disconnected: ")
    assert h["status"] == "unhealthy"
    assert h["rabbitmq"] == h["mysql"] == "connected"
    r = RestClient(stack.rest_base_url)
    r.token = client.token
    assert r.get(f"/v1/jobs/{job.job_id}").status_code == 503

    mongo_proxy.restore()
    finished = client.wait(job.job_id, timeout=120)
    assert finished.state == media_pb2.JOB_STATE_DONE, finished.error
    # Either the attempt rode out the outage (its reads and writes were not hit,
    # only its progress updates) or it failed and the job was retried in place.
    if store.assert_one_mp3(job.job_id)["mp3_fid"] != interrupted:
        store.assert_attempt_gone(interrupted)
    wait_health(stack, "mongodb", "connected")
    after = client.upload(clip, filename="after.mp4", timeout=FAST)
    assert client.wait(after.job_id, timeout=60).state == media_pb2.JOB_STATE_DONE
    assert len(client.download(after.job_id)) == store.assert_one_mp3(after.job_id)["mp3_size"]


def test_converter_holds_a_task_while_mongodb_is_cut_and_converts_it_after(
        mongo_proxy, mesh_factory, mongo_server, store, clip):
    """Only the converter's path to MongoDB is cut: a task that arrives
    meanwhile is retried in place (not requeued, no delivery spent) and
    converted once MongoDB is reachable again."""
    stack = mesh_factory(services=("auth", "gateway"))
    stack.start_service("converter", env=dict(
        stack.env, MONGO_URI=mongo_server.via(*mongo_proxy.address), MONGO_TIMEOUT_MS="1000",
        CONVERTER_RETRY_DELAY_S="0.5"))
    client = user_client(stack)

    mongo_proxy.cut()
    job_id = client.upload(clip, filename="held.mp4", timeout=FAST).job_id
    wait_for("the converter to retry the job",
               lambda: stack.log_tail("converter", 200).count(f"job {job_id}: storage unavailable") >= 2)
    assert store.job(job_id)["state"] == "QUEUED"

    mongo_proxy.restore()
    assert client.wait(job_id, timeout=60).state == media_pb2.JOB_STATE_DONE
    assert store.assert_one_mp3(job_id)["attempts"] == 1


# -- MySQL -------------------------------------------------------------------------

def test_mysql_cut_fails_logins_fast_and_recovers(mysql_proxy, mesh_factory, clip):
    """Sign-up and login need MySQL and answer UNAVAILABLE (503 over REST);
    tokens already issued keep working (verified without MySQL; their users
    were confirmed before the cut)."""
    stack = mesh_factory(services=("auth", "gateway", "envoy"), MYSQL_PORT=mysql_proxy.port)
    # The gateway's first look at auth may predate auth being up: start from a
    # fresh "connected", so the "disconnected" below is the cut's doing.
    wait_health(stack, "mysql", "connected")
    client = GrpcClient(stack.envoy_addr)
    email = client.sign_up_and_login()
    rest = RestClient(stack.rest_base_url)
    # The gateway confirms the user exists once (gateway/user_check.py); while
    # MySQL is away that answer keeps serving for USER_CACHE_STALE_S.
    assert client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=client.md, timeout=FAST) is not None

    mysql_proxy.cut()
    unavailable(client.auth.Login, auth_pb2.LoginRequest(email=email, password="correct horse 1"))
    unavailable(client.auth.SignUp, auth_pb2.SignUpRequest(email=unique_email(), password="long enough 1"))
    r = rest.s.post(f"{rest.base}/v1/login", json={"email": email, "password": "correct horse 1"}, timeout=FAST)
    assert r.status_code == 503, r.text
    h = wait_health(stack, "mysql", "disconnected: ")
    assert h["status"] == "unhealthy"
    assert h["mongodb"] == h["rabbitmq"] == "connected"
    assert client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=client.md, timeout=FAST) is not None

    mysql_proxy.restore()
    wait_health(stack, "mysql", "connected")
    client.sign_up_and_login()  # a new user
    assert client.auth.Login(auth_pb2.LoginRequest(email=email, password="correct horse 1"),
                             timeout=FAST).access_token
    assert health(stack)["status"] == "healthy"
