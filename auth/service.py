"""AuthService: sign up, log in (JWT access tokens), and who-am-I."""
from __future__ import annotations

import base64
import logging
import re

from google.protobuf.timestamp_pb2 import Timestamp
from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc

from auth.passwords import Passwords
from auth.users import (
    MAX_EMAIL_LENGTH,
    DatabaseUnavailable,
    EmailTaken,
    User,
    UserRepository,
)
from common import tokens
from common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    Reason,
    Unauthenticated,
)

log = logging.getLogger(__name__)

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
MIN_PASSWORD_LENGTH = 8
# Argon2 takes passwords of any length; a cap keeps a request from being a CPU lever.
MAX_PASSWORD_LENGTH = 1024
# Deliberately loose: one @, no spaces, a dot in the domain. Delivery proves the rest.
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")

BAD_CREDENTIALS_MESSAGE = "incorrect email or password"


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
    def __init__(self, users: UserRepository, passwords: Passwords, secret_key: str,
                 token_ttl_seconds: int):
        self._users = users
        self._passwords = passwords
        self._secret = secret_key
        self._ttl = token_ttl_seconds

    def SignUp(self, request, context):
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
        user = self._users.by_email(email)
        # Unknown email: verified against a dummy hash, so both failures take as long.
        ok, new_hash = self._passwords.verify(user.password_hash if user else None, password)
        if not ok:
            raise Unauthenticated(BAD_CREDENTIALS_MESSAGE, reason=Reason.BAD_CREDENTIALS)
        assert user is not None  # verify() never matches the None hash of an unknown email
        if new_hash:
            try:
                self._users.update_password_hash(user.id, new_hash)
                log.info("rehashed the password of user %d with current parameters", user.id)
            except DatabaseUnavailable as e:  # the login itself succeeded; retry next time
                log.warning("could not store the rehashed password of user %d: %s", user.id, e)
        token = tokens.issue(self._secret, str(user.id), user.email, self._ttl)
        return auth_pb2.LoginResponse(access_token=token, token_type="Bearer",
                                      expires_in=self._ttl)

    def GetMe(self, request, context):
        try:
            caller = tokens.verify(self._secret,
                                   tokens.bearer_from_metadata(context.invocation_metadata()))
            user_id = int(caller.user_id)
        except tokens.InvalidToken as e:
            raise Unauthenticated(str(e), reason=Reason.TOKEN_INVALID) from None
        except ValueError:  # signed by us, so this would be our own bug
            raise Unauthenticated("access token is not valid", reason=Reason.TOKEN_INVALID) from None
        user = self._users.by_id(user_id)
        if user is None:
            raise NotFound("the user of this token no longer exists", reason=Reason.USER_NOT_FOUND)
        return _user_message(user)
