"""Do the user and the login session of a validly signed token still hold? Asked of auth, cached briefly.

A token outlives its user (deleted account) and its session (logout, a
revoked session) until it expires; checking MySQL on every RPC would make
auth a hop of every request. So the gateway asks AuthService.GetMe with the
caller's own bearer token (auth verifies it, looks the user up and, for a
token with a session (`sid`), checks the session was not revoked) and
remembers the answer per user and session for USER_CACHE_TTL_S: a deleted
user's or a logged-out session's tokens stop working within that long.

When auth cannot answer (down, MySQL down): a remembered "holds" keeps
serving for up to USER_CACHE_STALE_S after it was last confirmed; a user or
session not seen within that time gets UNAVAILABLE ("try again"), never a
pass. A remembered refusal is never overridden by an outage.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.core.errors import Reason

log = logging.getLogger(__name__)

GETME_TIMEOUT_S = 3.0
MAX_ENTRIES = 100_000

# What auth says of a token: True (it holds), or why it does not: a Reason
# (False stands for USER_DELETED).
Answer = bool | str


class AuthUnreachable(Exception):
    """Auth could not say whether the user exists."""


def error_reason(err: grpc.RpcError) -> str:
    """The ErrorInfo reason of one of our servers' errors ("" if none)."""
    status = rpc_status.from_call(err) if isinstance(err, grpc.Call) else None
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def grpc_get_me(channel: grpc.Channel) -> Callable[[str, str], Answer]:
    """get_me(user_id, token) -> True (holds) or the refusal's reason; raises AuthUnreachable."""
    stub = auth_pb2_grpc.AuthServiceStub(channel)

    def get_me(user_id: str, token: str) -> Answer:
        try:
            me = stub.GetMe(auth_pb2.GetMeRequest(), metadata=[("authorization", f"Bearer {token}")],
                            timeout=GETME_TIMEOUT_S)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED):
                return error_reason(e) or Reason.USER_DELETED
            raise AuthUnreachable(f"{e.code().name}: {e.details()}") from None
        return me.id == user_id

    return get_me


def _refusal(answer: Answer) -> str | None:
    if answer is True:
        return None
    return answer or Reason.USER_DELETED


class UserCheck:
    def __init__(self, get_me: Callable[[str, str], Answer], ttl_s: float = 30.0, stale_s: float = 600.0):
        self._get_me = get_me
        self.ttl_s = ttl_s
        self.stale_s = stale_s
        self._lock = threading.Lock()
        # "user" or "user/session" -> (refusal or None, confirmed at, user id)
        self._seen: dict[str, tuple[str | None, float, str]] = {}

    def refusal(self, user_id: str, token: str, session_id: str = "") -> str | None:
        """None while the token's user (and session) hold; else the Reason to refuse it with.
        Raises AuthUnreachable when auth cannot answer and nothing recent enough is remembered."""
        key = f"{user_id}/{session_id}" if session_id else user_id
        now = time.monotonic()
        entry = self._seen.get(key)
        if entry is not None and now - entry[1] < self.ttl_s:
            return entry[0]
        try:
            refusal = _refusal(self._get_me(user_id, token))
        except AuthUnreachable as e:
            if entry is not None and (entry[0] is not None or now - entry[1] < self.stale_s):
                log.warning("auth unreachable (%s); using user %s's state from %.0f s ago", e, user_id, now - entry[1])
                return entry[0]
            raise
        with self._lock:
            if len(self._seen) >= MAX_ENTRIES:
                self._seen.clear()
            self._seen[key] = (refusal, time.monotonic(), user_id)
        return refusal

    def exists(self, user_id: str, token: str) -> bool:
        """Whether the token's user (and session) still hold; see refusal()."""
        return self.refusal(user_id, token) is None

    def forget(self, user_id: str) -> None:
        """Drop what is remembered of the user (every session): ask auth afresh next time."""
        with self._lock:
            for key in [k for k, entry in self._seen.items() if entry[2] == user_id]:
                del self._seen[key]
