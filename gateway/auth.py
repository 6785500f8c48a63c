"""The gateway's one auth check: a server interceptor that, for every
MediaService RPC except GetHealth, verifies the bearer JWT in-process against
auth's published keys (gateway/jwks.py), checks its user still exists
(gateway/user_check.py) and hands the verified Caller to the handler.

Every refusal gets the same UNAUTHENTICATED message (what to do: log in
again); the precise reason goes to the log only, so a forger learns nothing.
"""
from __future__ import annotations

import logging

from grpc_interceptor import ServerInterceptor

from video2mp3.core import tokens
from video2mp3.core.errors import DEPENDENCY_RETRY_S, Reason, Unauthenticated, Unavailable
from video2mp3.gateway.jwks import JwksCache
from video2mp3.gateway.user_check import AuthUnreachable, UserCheck

log = logging.getLogger(__name__)

MEDIA_SERVICE = "/video2mp3.media.v1.MediaService/"
# tus OPTIONS (DescribeUploads) says what the server offers, to anyone.
PUBLIC_METHODS = {MEDIA_SERVICE + "GetHealth", MEDIA_SERVICE + "DescribeUploads"}
AUTH_UNAVAILABLE_MESSAGE = "cannot confirm your account right now; try again shortly"


class AuthInterceptor(ServerInterceptor):
    def __init__(self, keys: JwksCache, users: UserCheck):
        self.keys = keys
        self.users = users

    def intercept(self, method, request_or_iterator, context, method_name):
        # Health and reflection services are public; so is GetHealth.
        if method_name.startswith(MEDIA_SERVICE) and method_name not in PUBLIC_METHODS:
            try:
                token = tokens.bearer_from_metadata(context.invocation_metadata())
                found = tokens.verify(token, self.keys.lookup)
            except tokens.InvalidToken as e:  # core/errors.py's interceptor answers it
                log.info("refused a token for %s from %s: %s", method_name, context.peer(), e)
                raise Unauthenticated(tokens.PUBLIC_MESSAGE, reason=Reason.TOKEN_INVALID) from None
            try:
                alive = self.users.exists(found.user_id, token)
            except AuthUnreachable as e:
                log.warning("cannot check user %s: auth unreachable (%s)", found.user_id, e)
                raise Unavailable(AUTH_UNAVAILABLE_MESSAGE, reason=Reason.AUTH_UNAVAILABLE,
                                  retry_after_s=DEPENDENCY_RETRY_S) from None
            if not alive:
                log.info("refused a token for %s: user %s no longer exists", method_name, found.user_id)
                raise Unauthenticated(tokens.PUBLIC_MESSAGE, reason=Reason.USER_DELETED)
            context.caller = found
        return method(request_or_iterator, context)


def caller(context) -> tokens.Caller:
    """The verified caller the interceptor attached to this RPC's context."""
    return context.caller
