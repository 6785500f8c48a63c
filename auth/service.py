"""AuthService: sign up, log in (EdDSA-signed JWT access tokens and rotating
refresh tokens: auth/sessions.py), API keys (auth/api_keys.py), who-am-I,
delete-me, and the public keys (JWKS) verifiers check tokens with."""
from __future__ import annotations

import base64
import dataclasses
import logging
import re
import unicodedata

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from video2mp3.auth import paging
from video2mp3.auth.accounts import MediaData, delete_account
from video2mp3.auth.api_keys import MAX_DISPLAY_NAME, MAX_KEYS_PER_USER, ApiKey, ApiKeys, TooManyKeys
from video2mp3.auth.keys import KeyRing
from video2mp3.auth.login_limits import LoginLimits, client_address
from video2mp3.auth.passwords import Passwords
from video2mp3.auth.sessions import RefreshRefused, Refusal, Renewal, Session, Sessions
from video2mp3.auth.users import (
    MAX_EMAIL_LENGTH,
    DatabaseUnavailable,
    EmailTaken,
    User,
    UserRepository,
)
from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.core import credentials, tokens
from video2mp3.core.errors import (
    DEPENDENCY_RETRY_S,
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
MIN_PASSWORD_LENGTH = 8
# Argon2 takes passwords of any length; a cap keeps a request from being a CPU lever.
MAX_PASSWORD_LENGTH = 1024
# Deliberately loose: one @, no spaces, a dot in the domain. Delivery proves the rest.
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")

BAD_CREDENTIALS_MESSAGE = "incorrect email or password"
SIGNUP_OFF_MESSAGE = "sign-up is switched off on this server; ask an administrator to create your account"
API_KEY_INVALID_MESSAGE = credentials.API_KEY_INVALID_MESSAGE
SESSION_REVOKED_MESSAGE = credentials.SESSION_REVOKED_MESSAGE
SESSION_REQUIRED_MESSAGE = credentials.SESSION_REQUIRED_MESSAGE
REFRESH_MESSAGES = {
    Refusal.INVALID: "this refresh token is not valid; log in again",
    Refusal.REUSED: (
        "this refresh token was used already, so its session has been ended in case it was stolen; log in again"
    ),
    Refusal.REVOKED: SESSION_REVOKED_MESSAGE,
    Refusal.EXPIRED: "your session has expired; log in again",
}


def basic_credentials(metadata) -> tuple[str, str]:
    """(email, password) from `authorization: Basic ...` (the seed's login), or empty."""
    for key, value in metadata or ():
        if key == "authorization" and value[:6].lower() == "basic ":
            try:
                email, _, password = base64.b64decode(value[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise InvalidArgument("authorization header is not valid Basic credentials",
                                      reason=Reason.INVALID_BASIC_AUTH) from None
            return email, password
    return "", ""


def _invalid(field: str, message: str) -> InvalidArgument:
    reason = Reason.INVALID_EMAIL if field == "email" else Reason.INVALID_PASSWORD
    return InvalidArgument(message, reason=reason, violations=[(field, message)])


def normalise_email(email: str) -> str:
    return email.strip().lower()


def _timestamp(when) -> Timestamp | None:
    if when is None:
        return None
    t = Timestamp()
    t.FromDatetime(when)
    return t


def _user_message(user: User) -> auth_pb2.User:
    return auth_pb2.User(id=str(user.id), email=user.email, create_time=_timestamp(user.created_at))


def _api_key_message(key: ApiKey) -> auth_pb2.ApiKey:
    return auth_pb2.ApiKey(
        id=key.id,
        display_name=key.display_name,
        key_prefix=key.key_prefix,
        scopes=[auth_pb2.ApiKeyScope.Value(credentials.SCOPE_ENUM_NAMES[s]) for s in sorted(key.scopes)],
        create_time=_timestamp(key.created_at),
        last_used_time=_timestamp(key.last_used_at),
    )


def _session_message(session: Session, current_id: str) -> auth_pb2.Session:
    return auth_pb2.Session(
        id=session.id,
        create_time=_timestamp(session.created_at),
        refresh_time=_timestamp(session.refreshed_at),
        expire_time=_timestamp(session.expires_at),
        user_agent=session.user_agent,
        client_address=session.client_address,
        current=session.id == current_id,
    )


def _metadata_value(metadata, name: str) -> str:
    return next((value for key, value in metadata or () if key == name), "")


def _display_name(text: str) -> str:
    name = text.strip()
    problem = ""
    if not name:
        problem = 'display_name is required: say what the key is for (e.g. "backup script")'
    elif len(name) > MAX_DISPLAY_NAME:
        problem = f"display_name must be at most {MAX_DISPLAY_NAME} characters"
    elif any(unicodedata.category(c) == "Cc" for c in name):
        problem = "display_name must not contain control characters"
    if problem:
        raise InvalidArgument(
            problem, reason=Reason.INVALID_DISPLAY_NAME, violations=[("api_key.display_name", problem)]
        )
    return name


def _scopes(values) -> frozenset[str]:
    by_number = {auth_pb2.ApiKeyScope.Value(name): scope for scope, name in credentials.SCOPE_ENUM_NAMES.items()}
    unknown = [
        auth_pb2.ApiKeyScope.Name(v) if v in auth_pb2.ApiKeyScope.values() else str(v)
        for v in values
        if v not in by_number
    ]
    if unknown:
        message = f"scopes may hold API_KEY_SCOPE_READ and API_KEY_SCOPE_WRITE (none: both); got {', '.join(unknown)}"
        raise InvalidArgument(message, reason=Reason.INVALID_SCOPE, violations=[("api_key.scopes", message)])
    return frozenset(by_number[v] for v in values)


def _required(field: str, value: str) -> str:
    if not value:
        message = f"{field} is required"
        raise InvalidArgument(message, reason=Reason.REFRESH_TOKEN_INVALID, violations=[(field, message)])
    return value


@dataclasses.dataclass(frozen=True)
class Credential:
    """The credential a call was made with, checked: whose it is and what it is."""

    user: User
    bearer: str  # as sent
    session_id: str = ""  # an access token's session
    api_key: ApiKey | None = None


class AuthService(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        users: UserRepository,
        passwords: Passwords,
        keys: KeyRing,
        token_ttl_seconds: int,
        limits: LoginLimits,
        media: MediaData,
        api_keys: ApiKeys,
        sessions: Sessions,
        allow_signup: bool = True,
    ):
        self._users = users
        self._passwords = passwords
        self._keys = keys
        self._ttl = token_ttl_seconds
        self._limits = limits
        self._media = media
        self._api_keys = api_keys
        self._sessions = sessions
        self._allow_signup = allow_signup

    # -- who is calling -----------------------------------------------------------

    def _credential(self, context) -> Credential:
        """The caller's checked credential: an API key in use, or a validly signed access token
        whose user exists and whose session was not revoked. UNAUTHENTICATED otherwise."""
        try:
            bearer = tokens.bearer_from_metadata(context.invocation_metadata())
        except tokens.InvalidToken as e:
            log.info("refused a call: %s", e)
            raise Unauthenticated(tokens.PUBLIC_MESSAGE, reason=Reason.TOKEN_INVALID) from None
        if credentials.is_api_key(bearer):
            return self._api_key_credential(bearer)
        return self._token_credential(bearer)

    def _api_key_credential(self, bearer: str) -> Credential:
        key = self._api_keys.authenticate(bearer)
        user = self._users.by_id(key.user_id) if key is not None else None
        if key is None or user is None:  # user None: deleted since the lookup
            log.info("refused an API key (%s...): unknown, deleted or malformed", bearer[:8])
            raise Unauthenticated(API_KEY_INVALID_MESSAGE, reason=Reason.API_KEY_INVALID)
        return Credential(user=user, bearer=bearer, api_key=key)

    def _token_credential(self, bearer: str) -> Credential:
        try:
            caller = tokens.verify(bearer, self._keys.public_key)
            user_id = int(caller.user_id)
        except (tokens.InvalidToken, ValueError) as e:  # ValueError: a non-numeric sub
            log.info("refused a token: %s", e)
            raise Unauthenticated(tokens.PUBLIC_MESSAGE, reason=Reason.TOKEN_INVALID) from None
        user = self._users.by_id(user_id)
        if user is None:
            log.info("refused a token: user %d no longer exists", user_id)
            raise Unauthenticated(tokens.PUBLIC_MESSAGE, reason=Reason.USER_DELETED)
        if caller.session_id and self._sessions.is_revoked(user_id, caller.session_id):
            log.info("refused a token of user %d: session %s has ended", user_id, caller.session_id)
            raise Unauthenticated(SESSION_REVOKED_MESSAGE, reason=Reason.SESSION_REVOKED)
        return Credential(user=user, bearer=bearer, session_id=caller.session_id)

    def _session_credential(self, context, what: str) -> Credential:
        """The caller's credential, which must be an access token: `what` it does needs a login."""
        cred = self._credential(context)
        if cred.api_key is not None:
            raise PermissionDenied(SESSION_REQUIRED_MESSAGE.format(what=what), reason=Reason.SESSION_REQUIRED)
        return cred

    def SignUp(self, request, context):
        if not self._allow_signup:
            raise PermissionDenied(SIGNUP_OFF_MESSAGE, reason=Reason.SIGNUP_DISABLED)
        email = normalise_email(request.email)
        if not email:
            raise _invalid("email", "email is required")
        if len(email) > MAX_EMAIL_LENGTH or not EMAIL_RE.match(email):
            raise _invalid("email", "email is not a valid email address (expected name@example.com)")
        if len(request.password) < MIN_PASSWORD_LENGTH:
            raise _invalid("password", f"password must be at least {MIN_PASSWORD_LENGTH} characters")
        if len(request.password) > MAX_PASSWORD_LENGTH:
            raise _invalid("password", f"password must be at most {MAX_PASSWORD_LENGTH} characters")
        if not self._users.available:  # fail before spending a hash on it
            raise DatabaseUnavailable("MySQL unreachable or users table not created yet")
        password_hash = self._passwords.hash(request.password)
        try:
            user = self._users.create(email, password_hash)
        except EmailTaken:
            raise AlreadyExists(f"a user with email {email} already exists; log in instead",
                                reason=Reason.EMAIL_TAKEN) from None
        log.info("signed up user %d", user.id)
        return _user_message(user)

    def Login(self, request, context):
        email, password = request.email, request.password
        if not email and not password:
            email, password = basic_credentials(context.invocation_metadata())
        email = normalise_email(email)
        if not email:
            raise _invalid("email", "email is required")
        if not password:
            raise _invalid("password", "password is required")
        address = client_address(context.invocation_metadata(), context.peer())
        if not self._users.available:  # fail before spending anything on it
            raise DatabaseUnavailable("MySQL unreachable or users table not created yet")
        self._limits.check(email, address)  # blocked: no lookup, no hash
        user = self._users.by_email(email)
        # Unknown email: verified against a dummy hash, so both failures take as long.
        ok, new_hash = self._passwords.verify(user.password_hash if user else None, password)
        if not ok or user is None:
            self._limits.failed(email, address)
            raise Unauthenticated(BAD_CREDENTIALS_MESSAGE, reason=Reason.BAD_CREDENTIALS)
        try:
            self._limits.succeeded(email)
        except DatabaseUnavailable as e:  # the login itself succeeded; the count just ages out
            log.warning("could not clear the failed-login count of user %d: %s", user.id, e)
        if new_hash:
            try:
                self._users.update_password_hash(user.id, new_hash)
                log.info("rehashed the password of user %d with current parameters", user.id)
            except DatabaseUnavailable as e:  # the login itself succeeded; retry next time
                log.warning("could not store the rehashed password of user %d: %s", user.id, e)
        metadata = context.invocation_metadata()
        renewal = self._sessions.start(
            user.id, user.email, user_agent=_metadata_value(metadata, "user-agent"), client_address=address
        )
        return auth_pb2.LoginResponse(**self._tokens(renewal))

    def _tokens(self, renewal: Renewal) -> dict:
        """The fields LoginResponse and RefreshSessionResponse share."""
        key = self._keys.signing()
        session = renewal.session
        token = tokens.issue(
            key.private_key, key.kid, str(session.user_id), renewal.email, self._ttl, session_id=session.id
        )
        return dict(
            access_token=token,
            token_type="Bearer",
            expires_in=self._ttl,
            refresh_token=renewal.refresh_token,
            refresh_token_expires_in=renewal.expires_in(),
            session_id=session.id,
        )

    def GetMe(self, request, context):
        return _user_message(self._credential(context).user)

    def GetCredential(self, request, context):
        cred = self._credential(context)
        if cred.api_key is not None:
            return auth_pb2.GetCredentialResponse(
                kind=auth_pb2.CREDENTIAL_KIND_API_KEY,
                user=_user_message(cred.user),
                api_key=_api_key_message(cred.api_key),
            )
        return auth_pb2.GetCredentialResponse(
            kind=auth_pb2.CREDENTIAL_KIND_ACCESS_TOKEN, user=_user_message(cred.user), session_id=cred.session_id
        )

    def DeleteMe(self, request, context):
        cred = self._session_credential(context, "deleting the account")
        user_id, token = cred.user.id, cred.bearer
        try:
            delete_account(self._users, self._media, user_id, token)
        except grpc.RpcError as e:
            log.warning("DeleteMe of user %d: the Media service did not delete the data: %s %s",
                        user_id, e.code().name, e.details())
            raise Unavailable("could not delete your files right now; your account is kept, "
                              "try again shortly", reason=Reason.MEDIA_UNAVAILABLE,
                              retry_after_s=DEPENDENCY_RETRY_S) from None
        return auth_pb2.DeleteMeResponse()

    def GetJwks(self, request, context):
        return auth_pb2.GetJwksResponse(keys=[auth_pb2.JsonWebKey(**jwk) for jwk in self._keys.jwks()])

    # -- API keys -----------------------------------------------------------------

    def CreateApiKey(self, request, context):
        cred = self._session_credential(context, "creating API keys")
        name = _display_name(request.api_key.display_name)
        scopes = _scopes(request.api_key.scopes)
        try:
            key, secret = self._api_keys.create(cred.user.id, name, scopes)
        except TooManyKeys:
            raise ResourceExhausted(
                f"you have {MAX_KEYS_PER_USER} API keys, the most allowed; delete one you no longer use first",
                reason=Reason.TOO_MANY_API_KEYS,
            ) from None
        log.info("user %d created API key %s (%s)", cred.user.id, key.id, credentials.describe_scopes(scopes))
        return auth_pb2.CreateApiKeyResponse(api_key=_api_key_message(key), key=secret)

    def ListApiKeys(self, request, context):
        cred = self._session_credential(context, "listing API keys")
        size, cursor = paging.page_size(request.page_size), paging.decode(request.page_token)
        found = self._api_keys.list(cred.user.id, size + 1, cursor)
        page = found[:size]
        token = paging.encode(page[-1].created_at, page[-1].id) if len(found) > size else ""
        return auth_pb2.ListApiKeysResponse(api_keys=[_api_key_message(k) for k in page], next_page_token=token)

    def DeleteApiKey(self, request, context):
        cred = self._session_credential(context, "deleting API keys")
        if not self._api_keys.delete(cred.user.id, request.id):
            raise NotFound(
                f"API key {request.id!r} not found (deleted already, or not yours)",
                reason=Reason.API_KEY_NOT_FOUND,
                metadata={"id": request.id},
            )
        log.info("user %d deleted API key %s", cred.user.id, request.id)
        return auth_pb2.DeleteApiKeyResponse()

    # -- sessions -----------------------------------------------------------------

    def RefreshSession(self, request, context):
        token = _required("refresh_token", request.refresh_token)
        try:
            renewal = self._sessions.refresh(token)
        except RefreshRefused as e:
            log.info("refused a refresh token: %s", e.refusal.value)
            raise Unauthenticated(REFRESH_MESSAGES[e.refusal], reason=e.refusal.value) from None
        return auth_pb2.RefreshSessionResponse(**self._tokens(renewal))

    def RevokeSession(self, request, context):
        session_id = self._sessions.revoke_by_token(_required("refresh_token", request.refresh_token))
        if session_id:
            log.info("session %s logged out", session_id)
        return auth_pb2.RevokeSessionResponse()

    def ListSessions(self, request, context):
        cred = self._session_credential(context, "listing sessions")
        size, cursor = paging.page_size(request.page_size), paging.decode(request.page_token)
        found = self._sessions.list(cred.user.id, size + 1, cursor)
        page = found[:size]
        token = paging.encode(page[-1].created_at, page[-1].id) if len(found) > size else ""
        return auth_pb2.ListSessionsResponse(
            sessions=[_session_message(s, cred.session_id) for s in page], next_page_token=token
        )

    def DeleteSession(self, request, context):
        cred = self._session_credential(context, "ending sessions")
        if not self._sessions.revoke(cred.user.id, request.id):
            raise NotFound(
                f"session {request.id!r} not found (ended already, or not yours)",
                reason=Reason.SESSION_NOT_FOUND,
                metadata={"id": request.id},
            )
        log.info("user %d ended session %s", cred.user.id, request.id)
        return auth_pb2.DeleteSessionResponse()
