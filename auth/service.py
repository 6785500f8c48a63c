"""AuthService: sign up, log in (JWT access tokens), and who-am-I."""
from __future__ import annotations

import base64
import functools
import logging
import re

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from video2mp3.auth.v1 import auth_pb2, auth_pb2_grpc

from auth.passwords import Passwords
from auth.users import MAX_EMAIL_LENGTH, DatabaseUnavailable, EmailTaken, User, UserRepository
from common import tokens

log = logging.getLogger(__name__)

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
MIN_PASSWORD_LENGTH = 8
# Argon2 takes passwords of any length; a cap keeps a request from being a CPU lever.
MAX_PASSWORD_LENGTH = 1024
# Deliberately loose: one @, no spaces, a dot in the domain. Delivery proves the rest.
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")

UNAVAILABLE_MESSAGE = "user database unavailable, try again"
BAD_CREDENTIALS_MESSAGE = "incorrect email or password"


class Failure(Exception):
    """Raised inside a handler to end the RPC with this status and message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _rpc(handler):
    """Turn Failure, DatabaseUnavailable and unexpected errors into gRPC statuses."""

    @functools.wraps(handler)
    def wrapper(self, request, context):
        try:
            return handler(self, request, context)
        except Failure as f:
            context.abort(f.code, f.message)
        except DatabaseUnavailable as e:
            log.warning("%s: user database unavailable: %s", handler.__name__, e)
            context.abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)
        except Exception:
            log.exception("%s failed", handler.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return wrapper


def basic_credentials(metadata) -> tuple[str, str]:
    """(email, password) from `authorization: Basic ...` (the seed's login), or empty."""
    for key, value in metadata or ():
        if key == "authorization" and value[:6].lower() == "basic ":
            try:
                email, _, password = base64.b64decode(value[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise Failure(grpc.StatusCode.INVALID_ARGUMENT,
                              "authorization header is not valid Basic credentials") from None
            return email, password
    return "", ""


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

    @_rpc
    def SignUp(self, request, context):
        email = normalise_email(request.email)
        if not email:
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT, "email is required")
        if len(email) > MAX_EMAIL_LENGTH or not EMAIL_RE.match(email):
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT,
                          "email is not a valid email address (expected name@example.com)")
        if len(request.password) < MIN_PASSWORD_LENGTH:
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT,
                          f"password must be at least {MIN_PASSWORD_LENGTH} characters")
        if len(request.password) > MAX_PASSWORD_LENGTH:
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT,
                          f"password must be at most {MAX_PASSWORD_LENGTH} characters")
        if not self._users.available:  # fail before spending a hash on it
            raise DatabaseUnavailable("MySQL unreachable or users table not created yet")
        password_hash = self._passwords.hash(request.password)
        try:
            user = self._users.create(email, password_hash)
        except EmailTaken:
            raise Failure(grpc.StatusCode.ALREADY_EXISTS,
                          f"a user with email {email} already exists") from None
        log.info("signed up user %d", user.id)
        return _user_message(user)

    @_rpc
    def Login(self, request, context):
        email, password = request.email, request.password
        if not email and not password:
            email, password = basic_credentials(context.invocation_metadata())
        email = normalise_email(email)
        if not email:
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT, "email is required")
        if not password:
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT, "password is required")
        user = self._users.by_email(email)
        # Unknown email: verified against a dummy hash, so both failures take as long.
        ok, new_hash = self._passwords.verify(user.password_hash if user else None, password)
        if not ok:
            raise Failure(grpc.StatusCode.UNAUTHENTICATED, BAD_CREDENTIALS_MESSAGE)
        if new_hash:
            try:
                self._users.update_password_hash(user.id, new_hash)
                log.info("rehashed the password of user %d with current parameters", user.id)
            except DatabaseUnavailable as e:  # the login itself succeeded; retry next time
                log.warning("could not store the rehashed password of user %d: %s", user.id, e)
        token = tokens.issue(self._secret, str(user.id), user.email, self._ttl)
        return auth_pb2.LoginResponse(access_token=token, token_type="Bearer",
                                      expires_in=self._ttl)

    @_rpc
    def GetMe(self, request, context):
        try:
            caller = tokens.verify(self._secret,
                                   tokens.bearer_from_metadata(context.invocation_metadata()))
            user_id = int(caller.user_id)
        except tokens.InvalidToken as e:
            raise Failure(grpc.StatusCode.UNAUTHENTICATED, str(e)) from None
        except ValueError:  # signed by us, so this would be our own bug
            raise Failure(grpc.StatusCode.UNAUTHENTICATED, "access token is not valid") from None
        user = self._users.by_id(user_id)
        if user is None:
            raise Failure(grpc.StatusCode.NOT_FOUND, "the user of this token no longer exists")
        return _user_message(user)
