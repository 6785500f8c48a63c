"""Webhooks (gateway/webhooks.py, gateway/webhook_dispatch.py, gateway/safe_http.py)
through Envoy, with a receiver of the test's own on 127.0.0.1 that verifies
every delivery with the `standardwebhooks` package.

The test meshes allow loopback receivers (WEBHOOK_ALLOW_PRIVATE=true) but
nothing outside 127.0.0.0/8 and ::1 (WEBHOOK_ALLOWED_NETWORKS, testkit/testbed.py);
the SSRF tests run a mesh with the setting off, as production runs.
"""
from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from standardwebhooks import Webhook

from localmesh.processes import wait_for
from testkit.clients import RestClient
from testkit.media import make_text_file

EVENTS = ["job.processing", "job.done", "job.failed"]


class Receiver:
    """An HTTP endpoint on 127.0.0.1: answers `statuses` in turn (then the last
    one forever), keeps every delivery it got and whether its signature held."""

    def __init__(self, statuses=(204,)):
        self.statuses = list(statuses)
        self.secret = ""
        self.got: list[dict] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = Webhook(outer.secret).verify(body, headers)
                    verified = True
                except Exception:  # noqa: BLE001 - recorded, asserted by the tests
                    payload, verified = json.loads(body or b"null"), False
                with outer.cond:
                    status = outer.statuses.pop(0) if len(outer.statuses) > 1 else outer.statuses[0]
                    outer.got.append({"id": headers.get("webhook-id"), "timestamp": headers.get("webhook-timestamp"),
                                      "payload": payload, "verified": verified, "answered": status,
                                      "path": self.path})
                    outer.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/video2mp3"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, cond, what: str, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not cond(self.got):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{what}: got {self.got}")
                self.cond.wait(left)
            return list(self.got)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def own_database(mongo_server, name: str) -> str:
    """A MongoDB database for one mesh alone: deliveries are dispatched by every
    gateway sharing the database (that is how replicas share the work), and
    the other meshes of the run have other settings (retry delays, SSRF rule)."""
    return mongo_server.build(mongo_server.host, mongo_server.port, f"{name}_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def hook_mesh(module_mesh_factory, mongo_server):
    return module_mesh_factory(WEBHOOK_RETRY_DELAYS_S="1,1,1,1", WEBHOOK_POLL_INTERVAL_S=0.2,
                               MONGO_URI=own_database(mongo_server, "v2m_hooks"))


@pytest.fixture
def rest(hook_mesh) -> RestClient:
    client = RestClient(hook_mesh.rest_base_url)
    client.sign_up_and_login()
    return client


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def register(rest: RestClient, receiver: Receiver, events=EVENTS) -> dict:
    r = requests.post(f"{rest.base}/v1/webhooks", json={"url": receiver.url, "events": events},
                      headers=rest.headers(), timeout=10)
    assert r.status_code == 200, r.text
    hook = r.json()
    receiver.secret = hook["secret"]
    return hook


def deliveries(rest: RestClient, hook: dict) -> list[dict]:
    r = rest.get(f"/v1/webhooks/{hook['webhook_id']}/deliveries")
    assert r.status_code == 200, r.text
    return r.json()["deliveries"]


def of_type(got: list[dict], event: str) -> list[dict]:
    return [g for g in got if g["payload"] and g["payload"].get("type") == event]


def test_job_events_arrive_signed_and_name_the_job(hook_mesh, rest, receiver, clip, tmp_path):
    hook = register(rest, receiver)
    assert hook["secret"].startswith("whsec_")
    assert hook["events"] == EVENTS
    job = rest.upload(clip).json()
    got = receiver.wait(lambda g: of_type(g, "job.done"), "job.done")
    got = receiver.wait(lambda g: of_type(g, "job.processing"), "job.processing")
    assert all(g["verified"] for g in got), got
    done = of_type(got, "job.done")[0]["payload"]
    assert done["data"]["job_id"] == job["job_id"]
    assert (done["data"]["state"], done["data"]["filename"]) == ("JOB_STATE_DONE", "clip.mp4")
    assert done["timestamp"].endswith("Z")
    assert of_type(got, "job.processing")[0]["payload"]["data"]["job_id"] == job["job_id"]
    # A failed job: job.failed with the reason.
    bad = rest.upload(make_text_file(tmp_path / "notes.mp4")).json()
    failed = receiver.wait(lambda g: of_type(g, "job.failed"), "job.failed")
    payload = of_type(failed, "job.failed")[0]["payload"]
    assert (payload["data"]["job_id"], payload["data"]["state"]) == (bad["job_id"], "JOB_STATE_FAILED")
    assert payload["data"]["error"]
    # The log: one delivery per event, each delivered once. A delivery is
    # recorded as succeeded just after the receiver has answered it.
    log = wait_for("every delivery recorded as succeeded", lambda: (d := deliveries(rest, hook)) and all(
        x["state"] == "DELIVERY_STATE_SUCCEEDED" for x in d) and d, timeout=30)
    assert sorted(d["event_type"] for d in log) == ["job.done", "job.failed", "job.processing", "job.processing"]
    assert all(d["state"] == "DELIVERY_STATE_SUCCEEDED" and d["attempts"] == 1 for d in log), log
    assert {d["delivery_id"] for d in log} == {g["id"] for g in receiver.got}


def test_only_the_events_asked_for(hook_mesh, rest, receiver, clip):
    register(rest, receiver, events=["job.done"])
    rest.upload(clip)
    got = receiver.wait(lambda g: of_type(g, "job.done"), "job.done")
    time.sleep(1)
    assert [g["payload"]["type"] for g in receiver.got] == ["job.done"], got


def test_a_failed_delivery_is_retried_with_the_same_webhook_id(hook_mesh, rest, clip):
    receiver = Receiver(statuses=(500, 503, 200))
    try:
        hook = register(rest, receiver, events=["job.done"])
        rest.upload(clip)
        got = receiver.wait(lambda g: len(g) >= 3, "three attempts")
        assert [g["answered"] for g in got] == [500, 503, 200]
        assert len({g["id"] for g in got}) == 1  # the same webhook-id every time
        assert all(g["verified"] for g in got)
        assert int(got[1]["timestamp"]) >= int(got[0]["timestamp"])  # each attempt signed anew
        log = wait_for("the log says delivered", lambda: (d := deliveries(rest, hook)) and
                       d[0]["state"] == "DELIVERY_STATE_SUCCEEDED" and d, timeout=20)
        assert (log[0]["attempts"], log[0]["last_response_code"], log[0]["last_error"]) == (3, 200, "")
        assert log[0]["delivery_id"] == got[0]["id"]
        assert "next_attempt_time" not in log[0]
    finally:
        receiver.close()


def test_the_log_shows_a_pending_retry_and_redeliver_sends_again(hook_mesh, rest, clip):
    receiver = Receiver(statuses=(500,))
    try:
        hook = register(rest, receiver, events=["job.done"])
        rest.upload(clip)
        receiver.wait(lambda g: len(g) >= 1, "a first attempt")
        pending = wait_for("a pending retry in the log", lambda: (d := deliveries(rest, hook)) and
                           d[0]["attempts"] >= 1 and d[0], timeout=20)
        assert pending["state"] == "DELIVERY_STATE_PENDING"
        assert (pending["last_response_code"], pending["last_error"]) == (500, "HTTP 500")
        assert pending["next_attempt_time"]
        # Every retry fails: after the schedule (4 retries), FAILED.
        failed = wait_for("the delivery failed for good", lambda: (d := deliveries(rest, hook)) and
                          d[0]["state"] == "DELIVERY_STATE_FAILED" and d[0], timeout=30)
        assert failed["attempts"] == 5
        receiver.statuses = [204]
        r = requests.post(f"{rest.base}/v1/webhooks/{hook['webhook_id']}/deliveries/{failed['delivery_id']}:redeliver",
                          json={}, headers=rest.headers(), timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "DELIVERY_STATE_PENDING"
        got = receiver.wait(lambda g: any(x["answered"] == 204 for x in g), "the redelivery")
        assert {g["id"] for g in got} == {failed["delivery_id"]}
        done = wait_for("redelivered", lambda: (d := deliveries(rest, hook)) and
                        d[0]["state"] == "DELIVERY_STATE_SUCCEEDED" and d[0], timeout=20)
        assert done["attempts"] == 6
    finally:
        receiver.close()


def test_deliveries_survive_a_gateway_killed_mid_schedule(hook_mesh, rest, clip):
    """The outbox is in MongoDB: a gateway killed while a delivery waits for
    its retry (and another killed before the job's event was even turned into
    deliveries) costs nothing but time."""
    receiver = Receiver(statuses=(503,))
    try:
        hook = register(rest, receiver, events=["job.done"])
        rest.upload(clip)
        first = receiver.wait(lambda g: len(g) >= 1, "a first attempt")[0]
        hook_mesh.kill("gateway")
        receiver.statuses = [200]
        hook_mesh.start_service("gateway")
        got = receiver.wait(lambda g: any(x["answered"] == 200 for x in g), "delivered after the restart")
        assert {g["id"] for g in got} == {first["id"]}
        # Killed between the job's upload and its completion: the DONE update
        # itself recorded the event, the next gateway delivers it.
        job = rest.upload(clip).json()
        hook_mesh.kill("gateway")
        time.sleep(3)  # the converter finishes the job meanwhile
        hook_mesh.start_service("gateway")
        receiver.wait(lambda g: any(x["payload"]["data"]["job_id"] == job["job_id"] for x in g),
                      "the event of a job finished while no gateway ran")
        assert all(g["verified"] for g in receiver.got)
        assert len([d for d in deliveries(rest, hook)]) == 2
    finally:
        receiver.close()


def test_webhooks_are_listed_fetched_and_deleted_by_their_owner_only(hook_mesh, rest, receiver):
    hook = register(rest, receiver, events=["job.failed"])
    listed = rest.get("/v1/webhooks").json()["webhooks"]
    assert [h["webhook_id"] for h in listed] == [hook["webhook_id"]]
    assert listed[0]["secret"] == ""  # shown once, at creation
    got = rest.get(f"/v1/webhooks/{hook['webhook_id']}").json()
    assert (got["url"], got["events"]) == (receiver.url, ["job.failed"])
    other = RestClient(rest.base)
    other.sign_up_and_login()
    assert other.get(f"/v1/webhooks/{hook['webhook_id']}").status_code == 404
    assert other.get("/v1/webhooks").json()["webhooks"] == []
    assert requests.delete(f"{rest.base}/v1/webhooks/{hook['webhook_id']}", headers=other.headers(),
                           timeout=10).status_code == 404
    for bad in ({"url": receiver.url, "events": []}, {"url": receiver.url, "events": ["job.eaten"]},
                {"url": "ftp://example.com/x", "events": ["job.done"]}, {"events": ["job.done"]}):
        r = requests.post(f"{rest.base}/v1/webhooks", json=bad, headers=rest.headers(), timeout=10)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["details"][1]["field_violations"][0]["field"].startswith("webhook.")
    r = requests.delete(f"{rest.base}/v1/webhooks/{hook['webhook_id']}", headers=rest.headers(), timeout=10)
    assert (r.status_code, r.json()) == (200, {})
    assert rest.get(f"/v1/webhooks/{hook['webhook_id']}").status_code == 404


# ------------------------------------------------------------------ SSRF

def loopback_name() -> str:
    """A host name (not `localhost`) that resolves to a loopback address here:
    the machine's own name (/etc/hosts maps it to 127.0.0.1 on this machine kind)."""
    name = socket.gethostname()
    addresses = {str(info[4][0]) for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    assert addresses, name
    assert all(a.startswith("127.") or a == "::1" for a in addresses), (name, addresses)
    return name


@pytest.fixture(scope="module")
def strict_mesh(module_mesh_factory, mongo_server):
    """Production's rule: private, loopback and link-local destinations refused
    (the egress allow-list still keeps every attempt on this machine)."""
    return module_mesh_factory(WEBHOOK_ALLOW_PRIVATE="false", WEBHOOK_POLL_INTERVAL_S=0.2,
                               WEBHOOK_RETRY_DELAYS_S="1", MONGO_URI=own_database(mongo_server, "v2m_strict"))


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/hook", "http://[::1]/hook", "http://localhost/hook", "http://api.localhost/",
    "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/", "http://100.100.100.200/",
    "http://10.0.0.7/hook", "http://192.168.1.20/", "http://172.20.0.1/", "http://[fe80::1]/",
    "http://[::ffff:169.254.169.254]/", "http://0.0.0.0:8000/", "http://224.0.0.1/",
    "file:///etc/passwd", "gopher://example.com/",
])
def test_plainly_private_urls_are_refused_at_creation(strict_mesh, url):
    rest = RestClient(strict_mesh.rest_base_url)
    rest.token = _strict_token(strict_mesh)
    r = requests.post(f"{rest.base}/v1/webhooks", json={"url": url, "events": ["job.done"]},
                      headers=rest.headers(), timeout=10)
    assert r.status_code == 400, r.text
    violation = r.json()["details"][1]["field_violations"][0]
    assert violation["field"] == "webhook.url"


_TOKENS: dict = {}


def _strict_token(stack) -> str:
    if stack not in _TOKENS:
        client = RestClient(stack.rest_base_url)
        client.sign_up_and_login()
        _TOKENS[stack] = client.token
    return _TOKENS[stack]


def test_a_name_resolving_to_a_private_address_is_refused_at_delivery(strict_mesh, receiver, clip):
    """Accepted at creation (no lookup then), refused at each attempt, logged;
    the receiver behind the name never hears a thing."""
    rest = RestClient(strict_mesh.rest_base_url)
    rest.sign_up_and_login()
    name = loopback_name()
    port = receiver.url.split(":")[2].split("/")[0]
    r = requests.post(f"{rest.base}/v1/webhooks", json={"url": f"http://{name}:{port}/hook", "events": ["job.done"]},
                      headers=rest.headers(), timeout=10)
    assert r.status_code == 200, r.text
    hook = r.json()
    rest.upload(clip)
    log = wait_for("a refused attempt in the log", lambda: (d := deliveries(rest, hook)) and
                   d[0]["attempts"] >= 1 and d[0], timeout=60)
    assert log["last_response_code"] == 0
    assert f"{name} resolves to 127." in log["last_error"], log
    assert "loopback" in log["last_error"]
    final = wait_for("given up", lambda: (d := deliveries(rest, hook)) and
                     d[0]["state"] == "DELIVERY_STATE_FAILED" and d[0], timeout=30)
    assert final["attempts"] == 2
    assert receiver.got == []


def test_deleting_an_account_deletes_its_webhooks_deliveries_and_unfinished_uploads(hook_mesh, rest, receiver, clip):
    from video2mp3.core.settings import MongoSettings
    from video2mp3.storage.mongo import Mongo

    hook = register(rest, receiver, events=["job.done"])
    rest.upload(clip)
    receiver.wait(lambda g: len(g) >= 1, "a delivery")
    r = requests.post(f"{rest.base}/v1/uploads", headers={**rest.headers(), "Tus-Resumable": "1.0.0",
                                                          "Upload-Length": "1000000"}, timeout=10)
    url = f"{rest.base}{r.headers['Location']}"
    r = requests.patch(url, data=b"x" * 300_000, headers={**rest.headers(), "Tus-Resumable": "1.0.0",
                       "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}, timeout=10)
    assert r.status_code == 204, r.text
    m = Mongo(MongoSettings(uri=hook_mesh.env["MONGO_URI"], timeout_ms=5000))
    try:
        upload = m.db.tus_uploads.find_one({"_id": url.rsplit("/", 1)[-1]})
        assert upload is not None
        assert m.db["videos.chunks"].count_documents({"files_id": upload["video_fid"]}) == 1
        r = requests.delete(f"{rest.base}/v1/me", headers=rest.headers(), timeout=30)
        assert r.status_code == 200, r.text
        assert m.db.webhooks.count_documents({"_id": hook["webhook_id"]}) == 0
        assert m.db.webhook_deliveries.count_documents({"webhook_id": hook["webhook_id"]}) == 0
        assert m.db.tus_uploads.count_documents({"user_id": upload["user_id"]}) == 0
        assert m.db["videos.chunks"].count_documents({"files_id": upload["video_fid"]}) == 0
    finally:
        m.close()
