"""AuthService: sign up, log in (EdDSA-signed JWT access tokens), who-am-I,
delete-me, and the public keys (JWKS) verifiers check tokens with."""
from __future__ import annotations

import base64
import logging
import re

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from video2mp3.auth.accounts import MediaData, delete_account
from video2mp3.auth.keys import KeyRing
from video2mp3.auth.login_limits import LoginLimits, client_address
from video2mp3.auth.passwords import Passwords
from video2mp3.auth.users import (
    MAX_EMAIL_LENGTH,
    DatabaseUnavailable,
    EmailTaken,
    User,
    UserRepository,
)
from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc
from video2mp3.core import tokens
from video2mp3.core.errors import (
    DEPENDENCY_RETRY_S,
    AlreadyExists,
    InvalidArgument,
    PermissionDenied,
    Reason,
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


def _user_message(user: User) -> auth_pb2.User:
    create_time = Timestamp()
    create_time.FromDatetime(user.created_at)
    return auth_pb2.User(id=str(user.id), email=user.email, create_time=create_time)


class AuthService(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, users: UserRepository, passwords: Passwords, keys: KeyRing,
                 token_ttl_seconds: int, limits: LoginLimits, media: MediaData,
                 allow_signup: bool = True):
        self._users = users
        self._passwords = passwords
        self._keys = keys
        self._ttl = token_ttl_seconds
        self._limits = limits
        self._media = media
        self._allow_signup = allow_signup

    def _caller(self, context) -> tuple[int, str]:
        """(user id, bearer token) of a validly signed token; one public message for every failure."""
        try:
            token = tokens.bearer_from_metadata(context.invocation_metadata())
            caller = tokens.verify(token, self._keys.public_key)
            return int(caller.user_id), token
        except (tokens.InvalidToken, ValueError) as e:  # ValueError: a non-numeric sub
            log.info("refused a token: %s", e)
            raise Unauthenticated(tokens.PUBLIC_MESSAGE, reason=Reason.TOKEN_INVALID) from None

    def _caller_user(self, context) -> tuple[User, str]:
        """(user, bearer token) of a valid token whose user still exists (the same message if not)."""
        user_id, token = self._caller(context)
        user = self._users.by_id(user_id)
        if user is None:
            log.info("refused a token: user %d no longer exists", user_id)
            raise Unauthenticated(tokens.PUBLIC_MESSAGE, reason=Reason.USER_DELETED)
        return user, token

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
        key = self._keys.signing()
        token = tokens.issue(key.private_key, key.kid, str(user.id), user.email, self._ttl)
        return auth_pb2.LoginResponse(access_token=token, token_type="Bearer",
                                      expires_in=self._ttl)

    def GetMe(self, request, context):
        user, _ = self._caller_user(context)
        return _user_message(user)

    def DeleteMe(self, request, context):
        user, token = self._caller_user(context)
        user_id = user.id
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
