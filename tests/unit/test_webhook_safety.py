"""Where webhooks may go (gateway/safe_http.py), how deliveries are signed and
retried (gateway/webhook_dispatch.py), and the tus header parsing (gateway/tus.py).

The sender is exercised against an in-process HTTP server on 127.0.0.1 with a
resolver of the test's own, so names resolving to metadata or private
addresses are checked without any DNS."""
from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from video2mp3.core.errors import ServiceError
from video2mp3.gateway import safe_http, tus, webhook_dispatch, webhooks
from video2mp3.gateway.safe_http import AddressPolicy, Refused

STRICT = AddressPolicy()
LOCAL_DEV = AddressPolicy(allow_private=True)

FORBIDDEN = {
    "127.0.0.1": "loopback", "127.8.9.10": "loopback", "::1": "loopback",
    "10.1.2.3": "private", "172.16.0.1": "private", "192.168.1.1": "private",
    "169.254.169.254": "link-local",          # cloud metadata (AWS, GCP, Azure)
    "fe80::1": "link-local", "100.64.0.1": "CGNAT", "100.100.100.200": "CGNAT",  # Alibaba's metadata
    "fd00:ec2::254": "unique-local",           # AWS metadata over IPv6
    "fc00::1": "unique-local", "0.0.0.0": "unspecified", "::": "unspecified",
    "224.0.0.1": "multicast", "ff02::1": "multicast", "255.255.255.255": "",
    "::ffff:127.0.0.1": "loopback", "::ffff:169.254.169.254": "link-local",   # IPv4-mapped
    "2002:7f00:1::": "loopback",               # 6to4 around 127.0.0.1
    "192.0.2.10": "", "198.18.0.1": "", "240.0.0.1": "",  # documentation, benchmarking, reserved
}


@pytest.mark.parametrize("address", sorted(FORBIDDEN))
def test_non_global_addresses_are_refused_unless_allowed(address):
    why = STRICT.why_not(address)
    assert why, address
    assert FORBIDDEN[address] in why
    if FORBIDDEN[address] not in ("unspecified", "multicast"):
        assert LOCAL_DEV.why_not(address) is None, address
    else:  # never: no TCP there
        assert LOCAL_DEV.why_not(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.216.34"])
def test_global_addresses_are_allowed(address):
    assert STRICT.why_not(address) is None


def test_allowed_networks_restrict_further():
    policy = AddressPolicy.parse(True, "127.0.0.0/8, ::1/128")
    assert policy.why_not("127.0.0.1") is None
    assert policy.why_not("::1") is None
    assert "outside" in (policy.why_not("8.8.8.8") or "")
    assert "outside" in (AddressPolicy.parse(False, "8.8.8.0/24").why_not("9.9.9.9") or "")
    assert "loopback" in (AddressPolicy.parse(False, "127.0.0.0/8").why_not("127.0.0.1") or "")
    with pytest.raises(ValueError, match="not-a-network"):
        AddressPolicy.parse(False, "not-a-network")


@pytest.mark.parametrize(("url", "wrong"), [
    ("ftp://example.com/x", "http"), ("file:///etc/passwd", "http"), ("gopher://x", "http"),
    ("http:///nohost", "host"), ("https://user:pw@example.com/", "password"),
    ("https://example.com/#frag", "fragment"), ("http://example.com:0/", "port 0"),
    ("http://127.0.0.1/", "loopback"), ("http://[::1]:8080/", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"), ("http://10.0.0.1/", "private"),
    ("http://[::ffff:127.0.0.1]/", "loopback"), ("http://0.0.0.0/", "unspecified"),
    ("http://localhost:8000/", "localhost"), ("http://a.b.localhost/", "localhost"),
    ("http://example.com/a b", "spaces"), ("", "URL"), ("http://example.com:99999/", "valid"),
    ("https://" + "a" * 2001 + ".com/", "2000"),
])
def test_plainly_bad_urls_are_refused_at_creation(url, wrong):
    with pytest.raises(ValueError, match=wrong):
        safe_http.check_url(url, STRICT)


def test_good_urls_pass_without_any_lookup():
    for url in ("https://hooks.example.com/video2mp3?x=1", "http://8.8.8.8:8080/h", "https://[2606:4700::1]/"):
        assert safe_http.check_url(url, STRICT) == url
    # Local development allows the receiver on 127.0.0.1.
    assert safe_http.check_url("http://127.0.0.1:9000/hook", LOCAL_DEV)
    assert safe_http.check_url("http://localhost:9000/hook", LOCAL_DEV)


# ------------------------------------------------------------------ the sender

class Receiver:
    """An HTTP server on 127.0.0.1 answering each POST with `status` (and a
    Location for redirects), recording what it got."""

    def __init__(self, status: int = 204):
        self.status = status
        self.got: list[tuple[str, dict, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.got.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(outer.status)
                if 300 <= outer.status < 400:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


class resolver_of:
    """A resolver answering from `table`, remembering which names it was asked."""

    def __init__(self, table: dict[str, list[str]]):
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return self.table[host]


def test_names_resolving_to_forbidden_addresses_are_refused_at_delivery(receiver):
    table = {"metadata.example": ["169.254.169.254"], "inside.example": ["10.0.0.5"],
             "loop.example": ["127.0.0.1"], "v6loop.example": ["::1"],
             "mixed.example": ["8.8.8.8", "127.0.0.1"], "mapped.example": ["::ffff:169.254.169.254"]}
    resolve = resolver_of(table)
    for host, addresses in table.items():
        with pytest.raises(Refused, match=f"{host} resolves to"):
            safe_http.post(f"http://{host}:{receiver.port}/h", b"{}", {}, policy=STRICT, timeout=2,
                           resolver=resolve)
        assert any(a in str(addresses) for a in addresses)
    assert receiver.got == []  # nothing was ever sent
    with pytest.raises(Refused, match=r"169\.254\.169\.254, a link-local"):
        safe_http.post("http://169.254.169.254/latest", b"{}", {}, policy=STRICT, timeout=2)


def test_the_connection_goes_to_the_address_checked_with_the_original_host(receiver):
    """One lookup; the socket is opened to the checked address; Host keeps the name."""
    resolve = resolver_of({"hooks.example": ["127.0.0.1"]})
    answer = safe_http.post(f"http://hooks.example:{receiver.port}/in?a=1", b'{"x":1}',
                            {"content-type": "application/json"}, policy=LOCAL_DEV, timeout=2, resolver=resolve)
    assert answer == safe_http.Answer(204, "127.0.0.1")
    assert resolve.calls == ["hooks.example"]
    path, headers, body = receiver.got[0]
    assert (path, headers["host"], body) == ("/in?a=1", f"hooks.example:{receiver.port}", b'{"x":1}')


def test_redirects_are_not_followed():
    r = Receiver(status=307)
    try:
        answer = safe_http.post(f"http://127.0.0.1:{r.port}/h", b"{}", {}, policy=LOCAL_DEV, timeout=2)
        assert answer.status == 307
        assert len(r.got) == 1
    finally:
        r.close()


def test_https_checks_the_certificate_against_the_original_name(receiver):
    """TLS to a plain-HTTP port fails in the handshake: the point is that the
    connection is TLS, to the checked address, with SNI set (no plaintext fallback)."""
    resolve = resolver_of({"hooks.example": ["127.0.0.1"]})
    with pytest.raises(OSError, match=r"SSL|ssl|record|handshake|EOF|reset"):
        safe_http.post(f"https://hooks.example:{receiver.port}/h", b"{}", {}, policy=LOCAL_DEV, timeout=2,
                       resolver=resolve)


# ------------------------------------------------------------------ signing and retries

def test_deliveries_are_signed_so_standardwebhooks_verifies_them():
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_")
    body = json.dumps({"type": "job.done", "data": {"job_id": "j1"}})
    when = dt.datetime.now(dt.UTC)
    headers = webhook_dispatch.signed_headers(secret, "msg_1", body, when)
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(int(when.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers)["data"]["job_id"] == "j1"
    with pytest.raises(Exception, match="signature"):
        Webhook(webhooks.new_secret()).verify(body, headers)


def test_delivery_ids_are_stable_per_webhook_job_and_event():
    a = webhook_dispatch.delivery_id("w1", "j1", "job.done")
    assert a == webhook_dispatch.delivery_id("w1", "j1", "job.done")
    assert len({a, webhook_dispatch.delivery_id("w2", "j1", "job.done"),
                webhook_dispatch.delivery_id("w1", "j1", "job.failed")}) == 3


def test_the_default_retry_schedule_lasts_more_than_an_hour():
    s = webhooks.WebhookSettings()
    assert len(s.retry_delays()) >= 5
    assert sum(s.retry_delays()) > 3600
    with pytest.raises(SystemExit, match="WEBHOOK_RETRY_DELAYS_S"):
        webhooks.WebhookSettings(retry_delays_s="soon")
    with pytest.raises(SystemExit, match="WEBHOOK_ALLOWED_NETWORKS"):
        webhooks.WebhookSettings(allowed_networks="10.0.0.0/33")


# ------------------------------------------------------------------ tus headers

def test_upload_metadata_is_parsed_as_tus_says():
    meta = tus.parse_metadata("filename ZsOqdGUubXA0,bitrate_kbps MTI4, is_confidential,channels MQ==")
    assert meta == {"filename": "fête.mp4", "bitrate_kbps": "128", "is_confidential": "", "channels": "1"}
    req = tus.upload_request(meta)
    assert (req.filename, req.bitrate_kbps, req.channels) == ("fête.mp4", 128, 1)
    assert tus.parse_metadata("") == {}
    for bad in ("filename !!!", "a YQ==,a YQ==", "k v w", "k " + "QQ==" * 2000):
        with pytest.raises(ServiceError) as e:
            tus.parse_metadata(bad)
        assert e.value.violations[0].field == "Upload-Metadata"
    with pytest.raises(ServiceError, match="integer"):
        tus.upload_request({"bitrate_kbps": "fast"})


def test_upload_expires_is_an_http_date():
    assert tus.http_date(dt.datetime(2026, 12, 3, 14, 30, 31, tzinfo=dt.UTC)) == "Thu, 03 Dec 2026 14:30:31 GMT"
