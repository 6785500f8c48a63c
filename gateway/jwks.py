"""The public keys tokens are verified with: AuthService.GetJwks, cached by kid.

  * A known kid never costs a call: verification stays in-process.
  * An unknown kid triggers one refetch (a key just published by a rotation),
    at most once per JWKS_MIN_REFETCH_S however many tokens carry unknown kids,
    so a flood of forged kids cannot hammer auth.
  * The set is also refreshed every JWKS_REFRESH_S (keys auth dropped go too).
  * Auth unreachable: the cached keys keep working; nothing is dropped.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.core import tokens
from video2mp3.telemetry import tracing

log = logging.getLogger(__name__)

Fetch = Callable[[], dict[str, Ed25519PublicKey]]
FETCH_TIMEOUT_S = 3.0


def auth_channel(auth_addr: str) -> grpc.Channel:
    """A channel to auth that reconnects within ~2 s of auth coming back (gRPC's
    default backoff grows to 120 s), for the key fetches, user checks and health
checks; its calls carry the request id and trace context (telemetry/tracing.py)."""
    return tracing.client_channel(auth_addr, options=[("grpc.initial_reconnect_backoff_ms", 200),
                                                      ("grpc.max_reconnect_backoff_ms", 2000)])


def grpc_fetcher(channel: grpc.Channel) -> Fetch:
    stub = auth_pb2_grpc.AuthServiceStub(channel)

    def fetch() -> dict[str, Ed25519PublicKey]:
        resp = stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=FETCH_TIMEOUT_S)
        keys = {}
        for jwk in resp.keys:
            key = tokens.key_from_jwk({"kty": jwk.kty, "crv": jwk.crv, "x": jwk.x, "alg": jwk.alg,
                                       "use": jwk.use})
            if key is not None and tokens.KID_RE.match(jwk.kid):
                keys[jwk.kid] = key
        return keys

    return fetch


class JwksCache:
    def __init__(self, fetch: Fetch, min_refetch_s: float = 10.0):
        self._fetch = fetch
        self._min_refetch_s = min_refetch_s
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._lock = threading.Lock()
        self._last_on_demand = -float("inf")

    def refresh(self) -> bool:
        """Replace the cached set with auth's; False (cache kept) if auth did not answer."""
        try:
            keys = self._fetch()
        except grpc.RpcError as e:
            log.warning("could not fetch the JWKS from auth (%s); keeping %d cached key(s)",
                        e.code().name, len(self._keys))
            return False
        if not keys:
            log.warning("auth published no usable key; keeping %d cached key(s)", len(self._keys))
            return False
        if set(keys) != set(self._keys):
            log.info("token keys now %s", ", ".join(sorted(keys)))
        self._keys = keys
        return True

    def lookup(self, kid: str) -> Ed25519PublicKey | None:
        key = self._keys.get(kid)
        if key is not None:
            return key
        with self._lock:  # one refetch at a time; the others wait for its result
            key = self._keys.get(kid)
            if key is not None:
                return key
            now = time.monotonic()
            if now - self._last_on_demand < self._min_refetch_s:
                return None
            self._last_on_demand = now
            self.refresh()
        return self._keys.get(kid)
