"""The gateway's one auth check: a server interceptor that verifies the bearer
JWT in-process (no call to the auth service) for every MediaService RPC except
GetHealth, and hands the verified Caller to the handler."""
from __future__ import annotations

from grpc_interceptor import ServerInterceptor

from common import tokens
from common.errors import Reason, Unauthenticated

MEDIA_SERVICE = "/video2mp3.media.v1.MediaService/"
PUBLIC_METHODS = {MEDIA_SERVICE + "GetHealth"}


class AuthInterceptor(ServerInterceptor):
    def __init__(self, secret_key: str):
        self.secret_key = secret_key

    def intercept(self, method, request_or_iterator, context, method_name):
        # Health and reflection services are public; so is GetHealth.
        if method_name.startswith(MEDIA_SERVICE) and method_name not in PUBLIC_METHODS:
            try:
                token = tokens.bearer_from_metadata(context.invocation_metadata())
                context.caller = tokens.verify(self.secret_key, token)
            except tokens.InvalidToken as e:  # common/errors.py's interceptor answers it
                raise Unauthenticated(str(e), reason=Reason.TOKEN_INVALID) from None
        return method(request_or_iterator, context)


def caller(context) -> tokens.Caller:
    """The verified caller the interceptor attached to this RPC's context."""
    return context.caller
