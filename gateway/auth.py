"""The gateway's one auth check: who is calling, and may they make this call.

For every MediaService RPC except GetHealth, a server interceptor reads
`authorization: Bearer <credential>` and hands the verified Caller to the
handler. The credential is either

  * an access token (a JWT): verified in-process against auth's published
    keys (gateway/jwks.py); auth confirms its user and session still hold
    (gateway/user_check.py, cached USER_CACHE_TTL_S); or
  * an API key (`v2m_...`): auth confirms it (gateway/api_keys.py, cached
    API_KEY_CACHE_TTL_S, never stale), and its scopes must cover the RPC
    (core/credentials.py: read RPCs need READ, the rest WRITE, and
    DeleteMyData is for access tokens only). Refused: PERMISSION_DENIED
    with reason API_KEY_SCOPE_INSUFFICIENT (or SESSION_REQUIRED).

A forged or stale access token gets the one UNAUTHENTICATED message (what to
do: log in again); the precise reason goes to the log only, so a forger
learns nothing. Other ways into the gateway (an HTTP handler) use the same
Authenticator: `authenticate([("authorization", header)], what)` then
`authorize(caller, method)`.
"""
from __future__ import annotations

import logging

from grpc_interceptor import ServerInterceptor

from video2mp3.core import credentials, tokens
from video2mp3.core.errors import DEPENDENCY_RETRY_S, PermissionDenied, Reason, Unauthenticated, Unavailable
from video2mp3.gateway.api_keys import ApiKeyCheck
from video2mp3.gateway.jwks import JwksCache
from video2mp3.gateway.user_check import AuthUnreachable, UserCheck

log = logging.getLogger(__name__)

MEDIA_SERVICE = "/video2mp3.media.v1.MediaService/"
# tus OPTIONS (DescribeUploads) says what the server offers, to anyone.
PUBLIC_METHODS = {MEDIA_SERVICE + "GetHealth", MEDIA_SERVICE + "DescribeUploads"}
AUTH_UNAVAILABLE_MESSAGE = "cannot confirm your account right now; try again shortly"
# What each permission covers, in words, for the refusal's message.
PERMISSION_WORDS = {
    credentials.READ: "seeing jobs and downloading MP3s",
    credentials.WRITE: "uploading videos and deleting jobs",
}
MESSAGES: dict[str, str] = {
    Reason.SESSION_REVOKED: credentials.SESSION_REVOKED_MESSAGE,
    Reason.API_KEY_INVALID: credentials.API_KEY_INVALID_MESSAGE,
}


def _unavailable(e: AuthUnreachable, what: str) -> Unavailable:
    log.warning("cannot check %s: auth unreachable (%s)", what, e)
    return Unavailable(AUTH_UNAVAILABLE_MESSAGE, reason=Reason.AUTH_UNAVAILABLE, retry_after_s=DEPENDENCY_RETRY_S)


def _refused(reason: str) -> Unauthenticated:
    return Unauthenticated(MESSAGES.get(reason, tokens.PUBLIC_MESSAGE), reason=reason)


class Authenticator:
    def __init__(self, keys: JwksCache, users: UserCheck, api_keys: ApiKeyCheck):
        self.keys = keys
        self.users = users
        self.api_keys = api_keys

    def authenticate(self, metadata, where: str) -> tokens.Caller:
        """The caller of a request with this metadata; ServiceError (UNAUTHENTICATED, UNAVAILABLE) if
        there is none. `where`: what is being called, for the log."""
        try:
            bearer = tokens.bearer_from_metadata(metadata)
        except tokens.InvalidToken as e:
            log.info("refused a call of %s: %s", where, e)
            raise Unauthenticated(tokens.PUBLIC_MESSAGE, reason=Reason.TOKEN_INVALID) from None
        if credentials.is_api_key(bearer):
            return self._api_key(bearer, where)
        return self._access_token(bearer, where)

    def _access_token(self, token: str, where: str) -> tokens.Caller:
        try:
            found = tokens.verify(token, self.keys.lookup)
        except tokens.InvalidToken as e:  # core/errors.py's interceptor answers it
            log.info("refused a token for %s: %s", where, e)
            raise Unauthenticated(tokens.PUBLIC_MESSAGE, reason=Reason.TOKEN_INVALID) from None
        try:
            refusal = self.users.refusal(found.user_id, token, found.session_id)
        except AuthUnreachable as e:
            raise _unavailable(e, f"user {found.user_id}") from None
        if refusal is not None:
            log.info("refused a token of user %s for %s: %s", found.user_id, where, refusal)
            raise _refused(refusal)
        return found

    def _api_key(self, key: str, where: str) -> tokens.Caller:
        try:
            answer = self.api_keys.check(key)
        except AuthUnreachable as e:
            raise _unavailable(e, "an API key") from None
        if isinstance(answer, str):
            log.info("refused an API key (%s...) for %s: %s", key[:8], where, answer)
            raise _refused(Reason.API_KEY_INVALID)
        return answer

    @staticmethod
    def authorize(caller: tokens.Caller, method_name: str) -> None:
        """PERMISSION_DENIED unless the caller may call `method_name` (only API keys are limited)."""
        if not caller.is_api_key:
            return
        needed = credentials.needed_permission(method_name)
        if credentials.allows(caller.scopes, needed):
            return
        name = method_name.rsplit("/", 1)[-1]
        if needed == credentials.ACCOUNT:
            raise PermissionDenied(
                credentials.SESSION_REQUIRED_MESSAGE.format(what=name), reason=Reason.SESSION_REQUIRED
            )
        raise PermissionDenied(
            f"this API key is {credentials.describe_scopes(caller.scopes)}: {PERMISSION_WORDS[needed]} "
            f"({name}) needs a key with the {needed} scope; create one with POST /v1/apiKeys",
            reason=Reason.API_KEY_SCOPE_INSUFFICIENT,
            metadata={
                "needed_scope": needed,
                "key_scopes": credentials.encode_scopes(caller.scopes),
                "api_key_id": caller.api_key_id,
            },
        )


class AuthInterceptor(ServerInterceptor):
    def __init__(self, authenticator: Authenticator):
        self.authenticator = authenticator

    def intercept(self, method, request_or_iterator, context, method_name):
        # Health and reflection services are public; so is GetHealth.
        if method_name.startswith(MEDIA_SERVICE) and method_name not in PUBLIC_METHODS:
            found = self.authenticator.authenticate(context.invocation_metadata(), method_name)
            self.authenticator.authorize(found, method_name)
            context.caller = found
        return method(request_or_iterator, context)


def caller(context) -> tokens.Caller:
    """The verified caller the interceptor attached to this RPC's context."""
    return context.caller
