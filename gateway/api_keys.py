"""API keys at the gateway: checked by auth (GetCredential), remembered for API_KEY_CACHE_TTL_S.

An API key cannot be verified in-process as an access token is (only its hash
exists, at auth), so the gateway asks auth's GetCredential with it and
remembers the answer (whose key it is and its scopes, or that it is not
valid) by the key's SHA-256 for ttl_s. So:

  * a deleted key stops working at every gateway within ttl_s (default 2 s)
    plus one call to auth;
  * a key costs auth at most one GetCredential (one indexed MySQL read) per
    gateway per ttl_s, however busy the program using it;
  * nothing stale: when auth cannot answer, a key whose answer is older than
    ttl_s gets UNAVAILABLE (try again), never a pass, so the bound above
    holds through outages too (an access token's signature at least proves
    it was issued; a key proves nothing by itself);
  * a malformed key is refused without asking anyone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc

from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.core import credentials, tokens
from video2mp3.core.errors import Reason
from video2mp3.gateway.user_check import AuthUnreachable, error_reason

log = logging.getLogger(__name__)

GET_CREDENTIAL_TIMEOUT_S = 3.0
MAX_ENTRIES = 100_000

# What auth says of a key: whose it is, or the Reason it is refused.
Answer = tokens.Caller | str


def _scopes(api_key: auth_pb2.ApiKey) -> frozenset[str]:
    return frozenset(
        scope
        for scope, name in credentials.SCOPE_ENUM_NAMES.items()
        if auth_pb2.ApiKeyScope.Value(name) in api_key.scopes
    )


def grpc_get_credential(channel: grpc.Channel) -> Callable[[str], Answer]:
    """get(key) -> the key's Caller, or the refusal's reason; raises AuthUnreachable."""
    stub = auth_pb2_grpc.AuthServiceStub(channel)

    def get(key: str) -> Answer:
        try:
            found = stub.GetCredential(
                auth_pb2.GetCredentialRequest(),
                metadata=[("authorization", f"Bearer {key}")],
                timeout=GET_CREDENTIAL_TIMEOUT_S,
            )
        except grpc.RpcError as e:
            if e.code() in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.NOT_FOUND,
            ):
                return error_reason(e) or Reason.API_KEY_INVALID
            raise AuthUnreachable(f"{e.code().name}: {e.details()}") from None
        if found.kind != auth_pb2.CREDENTIAL_KIND_API_KEY or not found.api_key.id:
            return Reason.API_KEY_INVALID
        return tokens.Caller(
            user_id=found.user.id, email=found.user.email, api_key_id=found.api_key.id, scopes=_scopes(found.api_key)
        )

    return get


class ApiKeyCheck:
    def __init__(self, get: Callable[[str], Answer], ttl_s: float = 2.0):
        self._get = get
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._seen: dict[bytes, tuple[Answer, float]] = {}  # SHA-256 of the key -> (answer, asked at)

    def check(self, key: str) -> Answer:
        """The key's Caller, or the Reason to refuse it. Raises AuthUnreachable when auth cannot
        answer and no answer younger than ttl_s is remembered."""
        if not credentials.well_formed(key, credentials.API_KEY_PREFIX):
            return Reason.API_KEY_INVALID
        digest = credentials.digest(key)
        asked = time.monotonic()
        entry = self._seen.get(digest)
        if entry is not None and asked - entry[1] < self.ttl_s:
            return entry[0]
        answer = self._get(key)
        with self._lock:
            if len(self._seen) >= MAX_ENTRIES:
                self._seen.clear()
            # Timed from before the question: the answer is never trusted past ttl_s
            # after auth could have known better.
            self._seen[digest] = (answer, asked)
        return answer

    def forget(self, user_id: str) -> None:
        with self._lock:
            for digest in [
                d
                for d, (answer, _) in self._seen.items()
                if isinstance(answer, tokens.Caller) and answer.user_id == user_id
            ]:
                del self._seen[digest]
