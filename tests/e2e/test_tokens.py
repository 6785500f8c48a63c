"""Tokens no one can forge, against the real mesh (auth, gateway, Envoy).

Every forged, tampered or stale token gets UNAUTHENTICATED / 401 with the one
public message, from the Media service and from auth, over gRPC and REST, and
leaves the victim's account and data exactly as they were. Also: the JWKS
through Envoy, key rotation while requests are in flight, a production auth
without a key, and no signing material anywhere in the repository.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time

import grpc
import jwt
import pymysql
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import testkit
from localmesh.processes import wait_for
from testkit import testbed
from testkit.clients import GrpcClient, RestClient, unique_email
from testkit.media import make_text_file
from video2mp3.auth.keys import generate, load_dir
from video2mp3.auth.v1 import auth_pb2
from video2mp3.core import tokens
from video2mp3.media.v1 import media_pb2

ROOT = testkit.ROOT
# The seed's development key and the placeholders the old manifests shipped:
# an attacker who read the old source has these.
OLD_SHARED_SECRETS = ["video2mp3-insecure-dev-secret-set-SECRET_KEY", "change-me-to-a-long-random-string",
                      "change-me-in-production"]


def b64(data: bytes | dict) -> str:
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(secret: bytes, header: dict, claims: dict) -> str:
    """HS256 by hand: pyjwt refuses to HMAC with something that looks like a public key."""
    signing_input = f"{b64(header)}.{b64(claims)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def claims_for(user_id: str, email: str, **changes) -> dict:
    now = int(time.time())
    c = {"sub": user_id, "email": email, "iat": now, "nbf": now, "exp": now + 600,
         "iss": tokens.ISSUER, "aud": tokens.AUDIENCE}
    c.update(changes)
    return {k: v for k, v in c.items() if v is not None}


@pytest.fixture(scope="module")
def victim(mesh, tmp_path_factory):
    """A user with a job, whose identity the attacks try to assume."""
    client = GrpcClient(mesh.envoy_addr)
    email = client.sign_up_and_login()
    client.upload(make_text_file(tmp_path_factory.mktemp("victim") / "v.mp4"), filename="v.mp4")
    user_id = jwt.decode(client.token, options={"verify_signature": False})["sub"]
    yield client, user_id, email
    client.close()


def forged_tokens(env: dict, user_id: str, email: str, real_token: str) -> dict[str, str]:
    key = testbed.signing_key(env)
    kid = key.kid
    pub = key.public_key
    pub_pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub_raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = tokens.public_jwk(kid, pub)
    c = claims_for(user_id, email)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    attacker = generate()
    other_deployment = generate()
    head, payload, sig = real_token.split(".")
    tampered_claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    tampered_claims["sub"] = str(int(user_id) + 1)
    out = {
        # alg "none" takes the key None; PyJWT's encode() annotation leaves None out.
        "alg none": jwt.encode(c, None, algorithm="none", headers={"kid": kid}),  # type: ignore[arg-type]
        "alg none, no signature": f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{b64(c)}.",
        "HS256 with the public key PEM as secret": hs256(pub_pem, {"alg": "HS256", "typ": "JWT", "kid": kid}, c),
        "HS256 with the raw public key as secret": hs256(pub_raw, {"alg": "HS256", "typ": "JWT", "kid": kid}, c),
        "HS256 with the JWK x as secret": hs256(jwk["x"].encode(), {"alg": "HS256", "typ": "JWT", "kid": kid}, c),
        "RS256": jwt.encode(c, rsa_key, algorithm="RS256", headers={"kid": kid}),
        "ES256": jwt.encode(c, ec_key, algorithm="ES256", headers={"kid": kid}),
        "unknown kid": tokens.issue(attacker.private_key, attacker.kid, user_id, email, 600),
        "our kid, attacker's key": tokens.issue(attacker.private_key, kid, user_id, email, 600),
        "kid is a URL": jwt.encode(
            c, attacker.private_key, algorithm="EdDSA", headers={"kid": "https://attacker.example/jwks.json"}
        ),
        "kid is a path": jwt.encode(
            c, attacker.private_key, algorithm="EdDSA", headers={"kid": "../../../../../dev/null"}
        ),
        "jku header": jwt.encode(
            c,
            attacker.private_key,
            algorithm="EdDSA",
            headers={"kid": attacker.kid, "jku": "https://attacker.example/jwks.json"},
        ),
        "embedded jwk header": jwt.encode(
            c,
            attacker.private_key,
            algorithm="EdDSA",
            headers={"kid": attacker.kid, "jwk": tokens.public_jwk(attacker.kid, attacker.public_key)},
        ),
        "tampered payload": f"{head}.{b64(tampered_claims)}.{sig}",
        "signature stripped": f"{head}.{payload}.",
        "expired": tokens.issue(key.private_key, kid, user_id, email, 60, now=time.time() - 3600),
        "nbf in the future": jwt.encode(
            claims_for(user_id, email, nbf=int(time.time()) + 3600),
            key.private_key,
            algorithm="EdDSA",
            headers={"kid": kid},
        ),
        "iat in the future": tokens.issue(key.private_key, kid, user_id, email, 600, now=time.time() + 3600),
        "no exp": jwt.encode(
            claims_for(user_id, email, exp=None), key.private_key, algorithm="EdDSA", headers={"kid": kid}
        ),
        "wrong aud": jwt.encode(
            claims_for(user_id, email, aud="another-service"), key.private_key, algorithm="EdDSA", headers={"kid": kid}
        ),
        "wrong iss": jwt.encode(
            claims_for(user_id, email, iss="https://attacker.example"),
            key.private_key,
            algorithm="EdDSA",
            headers={"kid": kid},
        ),
        "another deployment's key": tokens.issue(
            other_deployment.private_key, other_deployment.kid, user_id, email, 600
        ),
    }
    for i, secret in enumerate(OLD_SHARED_SECRETS):
        out[f"HS256 with an old shared secret #{i}"] = jwt.encode(
            claims_for(user_id, email), secret, algorithm="HS256")
        out[f"HS256 with an old shared secret #{i}, our kid"] = jwt.encode(
            claims_for(user_id, email), secret, algorithm="HS256", headers={"kid": kid})
    return out


def assert_refused(mesh, token: str, what: str) -> None:
    md = [("authorization", f"Bearer {token}")]
    client = GrpcClient(mesh.envoy_addr)
    direct = GrpcClient(mesh.media_addr)
    try:
        calls = {
            "ListJobs": lambda: client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=md, timeout=10),
            "GetJob": lambda: client.media.GetJob(media_pb2.GetJobRequest(job_id="x"), metadata=md, timeout=10),
            "DeleteMyData": lambda: client.media.DeleteMyData(media_pb2.DeleteMyDataRequest(), metadata=md,
                                                              timeout=10),
            "DeleteMyData (direct)": lambda: direct.media.DeleteMyData(media_pb2.DeleteMyDataRequest(),
                                                                       metadata=md, timeout=10),
            "GetMe": lambda: client.auth.GetMe(auth_pb2.GetMeRequest(), metadata=md, timeout=10),
            "DeleteMe": lambda: client.auth.DeleteMe(auth_pb2.DeleteMeRequest(), metadata=md, timeout=10),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (what, name, e.value.details())
            assert e.value.details() == tokens.PUBLIC_MESSAGE, (what, name)
    finally:
        client.close()
        direct.close()
    rest = RestClient(mesh.rest_base_url)
    for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/me"), ("DELETE", "/v1/me")):
        r = rest.s.request(method, f"{rest.base}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=20)
        assert r.status_code == 401, (what, path, r.text)
        assert r.json()["message"] == tokens.PUBLIC_MESSAGE


def test_every_forged_or_stale_token_is_refused_and_changes_nothing(mesh, victim):
    client, user_id, email = victim
    before = client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=client.md, timeout=10)
    assert len(before.jobs) == 1
    forged = forged_tokens(mesh.env, user_id, email, client.token)
    for what, token in forged.items():
        assert_refused(mesh, token, what)
    # The victim is untouched and their own token still works.
    after = client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=client.md, timeout=10)
    assert [j.job_id for j in after.jobs] == [j.job_id for j in before.jobs]
    assert client.auth.GetMe(auth_pb2.GetMeRequest(), metadata=client.md, timeout=10).email == email
    # The reasons are logged server-side, precisely.
    log = mesh.log_tail("gateway", 400)
    assert "unknown kid" in log
    assert "expired" in log
    assert "algorithm 'HS256' is not EdDSA" in log


def test_token_of_a_deleted_user_is_refused(mesh, mysql_db):
    client = GrpcClient(mesh.envoy_addr)
    email = client.sign_up_and_login()
    assert client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=client.md, timeout=10) is not None
    con = pymysql.connect(host=mysql_db["MYSQL_HOST"], port=int(mysql_db["MYSQL_PORT"]),
                          user=mysql_db["MYSQL_USER"], password=mysql_db["MYSQL_PASSWORD"],
                          database=mysql_db["MYSQL_DB"], autocommit=True)
    with con.cursor() as cur:
        cur.execute("DELETE FROM users WHERE email = %s", (email,))
    con.close()
    time.sleep(float(mesh.env["USER_CACHE_TTL_S"]) + 0.2)  # the gateway's cache of "exists"
    assert_refused(mesh, client.token, "deleted user")
    client.close()


def test_jwks_through_envoy_is_a_valid_key_set_that_verifies_tokens(mesh):
    r = requests.get(f"{mesh.rest_base_url}/.well-known/jwks.json", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"keys"}
    keyset = jwt.PyJWKSet.from_dict(body)
    for k in body["keys"]:
        assert set(k) == {"kty", "crv", "x", "kid", "alg", "use"}
        assert "d" not in k
    client = GrpcClient(mesh.envoy_addr)
    client.sign_up_and_login()
    kid = jwt.get_unverified_header(client.token)["kid"]
    claims = jwt.decode(client.token, keyset[kid].key, algorithms=["EdDSA"], audience=tokens.AUDIENCE,
                        issuer=tokens.ISSUER)
    assert claims["sub"]
    # And over gRPC.
    resp = client.auth.GetJwks(auth_pb2.GetJwksRequest(), timeout=10)
    assert [k.kid for k in resp.keys] == [k["kid"] for k in body["keys"]]
    client.close()




def _run_auth(env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "video2mp3.auth"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("keys", ["unset", "empty dir"])
def test_production_auth_without_a_key_refuses_to_start_with_one_line(mesh_env, tmp_path, keys):
    env = testbed.fresh_ports(mesh_env)
    env["VIDEO2MP3_ENV"] = "production"
    env.pop("AUTH_KEYS_DIR")
    if keys == "empty dir":
        env["AUTH_KEYS_DIR"] = str(tmp_path)
    r = _run_auth(env)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "AUTH_KEYS_DIR" in lines[0]
    assert "python -m video2mp3.auth keys new --dir" in lines[0]


def test_keys_new_writes_an_owner_only_key_and_refuses_a_second(mesh_env, tmp_path):
    d = tmp_path / "keys"
    run = lambda *a: subprocess.run([sys.executable, "-m", "video2mp3.auth", "keys", *a, "--dir", str(d)],  # noqa: E731
                                    env=mesh_env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert run("new").returncode == 0
    (pem,) = d.glob("*.pem")
    assert pem.stat().st_mode & 0o777 == 0o600
    assert d.stat().st_mode & 0o777 == 0o700
    assert run("new").returncode == 1
    assert run("rotate").returncode == 0
    assert len(load_dir(d)) == 2
    listing = run("list").stdout
    assert "signing" in listing
    assert "published" in listing


def test_rotation_while_requests_are_in_flight_fails_none(mesh_factory, tmp_path):
    keys_dir = tmp_path / "keys"
    testbed.new_keys_dir(keys_dir)
    stack = mesh_factory(services=("auth", "gateway", "envoy"), AUTH_KEYS_DIR=keys_dir, KEYS_RELOAD_S="0.3",
                         KEY_ACTIVATE_AFTER_S="2", JWKS_REFRESH_S="0.5")
    old_kid = load_dir(keys_dir)[0].kid
    stop = threading.Event()
    failures: list[str] = []
    kids_seen: set[str] = set()
    counts = [0]

    def worker(n: int):
        client = GrpcClient(stack.envoy_addr)
        rest = RestClient(stack.rest_base_url)
        email = unique_email(f"rot{n}")
        password = "correct horse 1"
        try:
            client.sign_up_and_login(email, password)
            while not stop.is_set():
                try:
                    token = client.auth.Login(auth_pb2.LoginRequest(email=email, password=password),
                                              timeout=20).access_token
                    kids_seen.add(jwt.get_unverified_header(token)["kid"])
                    md = [("authorization", f"Bearer {token}")]
                    client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=md, timeout=10)
                    # An older token too, signed before the rotation.
                    client.media.ListJobs(media_pb2.ListJobsRequest(), metadata=client.md, timeout=10)
                    r = rest.get("/v1/jobs", token=token)
                    assert r.status_code == 200, r.text
                    counts[0] += 1
                except (grpc.RpcError, AssertionError) as e:
                    failures.append(f"{type(e).__name__}: {e}")
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    wait_for("requests with the first key", lambda: old_kid in kids_seen and counts[0] >= 3, timeout=30)
    r = subprocess.run([sys.executable, "-m", "video2mp3.auth", "keys", "rotate", "--dir", str(keys_dir)],
                       env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    new_kid = next(k.kid for k in load_dir(keys_dir) if k.kid != old_kid)
    try:
        wait_for("tokens signed with the new key", lambda: new_kid in kids_seen, timeout=20)
        time.sleep(1.5)  # and requests go on with it
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert old_kid in kids_seen
    assert counts[0] > 10
    published = [k["kid"] for k in requests.get(f"{stack.rest_base_url}/.well-known/jwks.json",
                                                timeout=10).json()["keys"]]
    assert set(published) == {old_kid, new_kid}  # the old one until its tokens expire
