"""Does the user of a validly signed token still exist? Asked of auth, cached briefly.

A token outlives its user (deleted account) until it expires; checking MySQL on
every RPC would make auth a hop of every request. So the gateway asks
AuthService.GetMe with the caller's own bearer token (auth verifies it and
looks the user up) and remembers the answer per user for USER_CACHE_TTL_S:
a deleted user's tokens stop working within that long.

When auth cannot answer (down, MySQL down): a remembered "exists" keeps
serving for up to USER_CACHE_STALE_S after it was last confirmed; a user not
seen within that time gets UNAVAILABLE ("try again"), never a pass. A
remembered "gone" is never overridden by an outage.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc

from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)

GETME_TIMEOUT_S = 3.0
MAX_ENTRIES = 100_000


class AuthUnreachable(Exception):
    """Auth could not say whether the user exists."""


def grpc_get_me(channel: grpc.Channel) -> Callable[[str, str], bool]:
    """get_me(user_id, token) -> True (exists) / False (gone or not accepted); raises AuthUnreachable."""
    stub = auth_pb2_grpc.AuthServiceStub(channel)

    def get_me(user_id: str, token: str) -> bool:
        try:
            me = stub.GetMe(auth_pb2.GetMeRequest(), metadata=[("authorization", f"Bearer {token}")],
                            timeout=GETME_TIMEOUT_S)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED):
                return False
            raise AuthUnreachable(f"{e.code().name}: {e.details()}") from None
        return me.id == user_id

    return get_me


class UserCheck:
    def __init__(self, get_me: Callable[[str, str], bool], ttl_s: float = 30.0, stale_s: float = 600.0):
        self._get_me = get_me
        self.ttl_s = ttl_s
        self.stale_s = stale_s
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[bool, float]] = {}  # user id -> (exists, confirmed at)

    def exists(self, user_id: str, token: str) -> bool:
        """Raises AuthUnreachable when auth cannot answer and nothing recent enough is remembered."""
        now = time.monotonic()
        entry = self._seen.get(user_id)
        if entry is not None and now - entry[1] < self.ttl_s:
            return entry[0]
        try:
            exists = self._get_me(user_id, token)
        except AuthUnreachable as e:
            if entry is not None and (not entry[0] or now - entry[1] < self.stale_s):
                log.warning("auth unreachable (%s); using user %s's state from %.0f s ago",
                            e, user_id, now - entry[1])
                return entry[0]
            raise
        with self._lock:
            if len(self._seen) >= MAX_ENTRIES:
                self._seen.clear()
            self._seen[user_id] = (exists, time.monotonic())
        return exists

    def forget(self, user_id: str) -> None:
        self._seen.pop(user_id, None)
