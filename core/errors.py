"""The one way an RPC ends with an error, on every server.

Handlers (and interceptors) raise a ServiceError subclass; ErrorInterceptor,
which rpc/server.build_server installs first, turns it into a rich
status: the code, a message that says what to do next, and google.rpc details:
ErrorInfo(reason, domain, metadata) always, BadRequest when fields are wrong,
RetryInfo when trying again later helps. Through Envoy, REST clients get the
same as JSON. A dependency that is down (MongoDB, MySQL) becomes UNAVAILABLE
here and nowhere else; anything unexpected becomes INTERNAL, logged once.
"""
from __future__ import annotations

import collections
import collections.abc
import enum
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import grpc
import pymongo.errors
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_interceptor import ExceptionToStatusInterceptor
from grpc_interceptor.exceptions import GrpcException
from grpc_status import rpc_status

log = logging.getLogger(__name__)

DOMAIN = "video2mp3"
# How long a client should wait before retrying an unavailable dependency: about
# one health-check period, after which a recovered dependency is in use again.
DEPENDENCY_RETRY_S = 2.0


class Reason(enum.StrEnum):
    """ErrorInfo.reason: stable, for programs to branch on (messages may change)."""
    # auth
    INVALID_EMAIL = "INVALID_EMAIL"
    INVALID_PASSWORD = "INVALID_PASSWORD"
    INVALID_BASIC_AUTH = "INVALID_BASIC_AUTH"
    BAD_CREDENTIALS = "BAD_CREDENTIALS"
    EMAIL_TAKEN = "EMAIL_TAKEN"
    # Every token verification failure (malformed, expired, unknown kid, bad
    # signature...): the message is one and the same, the details are logged.
    TOKEN_INVALID = "TOKEN_INVALID"
    # A validly signed token whose user has been deleted.
    USER_DELETED = "USER_DELETED"
    USER_DATABASE_UNAVAILABLE = "USER_DATABASE_UNAVAILABLE"
    LOGIN_BLOCKED = "LOGIN_BLOCKED"
    SIGNUP_DISABLED = "SIGNUP_DISABLED"
    # DeleteMe: the Media service did not confirm deleting the user's data.
    MEDIA_UNAVAILABLE = "MEDIA_UNAVAILABLE"
    # API keys (auth/api_keys.py): unknown, deleted or malformed (one message for all).
    API_KEY_INVALID = "API_KEY_INVALID"
    # PERMISSION_DENIED: the key's scopes do not cover the call (a read-only key uploading).
    API_KEY_SCOPE_INSUFFICIENT = "API_KEY_SCOPE_INSUFFICIENT"
    # PERMISSION_DENIED: an API key where an access token is needed (managing keys
    # and sessions, deleting the account).
    SESSION_REQUIRED = "SESSION_REQUIRED"
    API_KEY_NOT_FOUND = "API_KEY_NOT_FOUND"
    TOO_MANY_API_KEYS = "TOO_MANY_API_KEYS"
    INVALID_DISPLAY_NAME = "INVALID_DISPLAY_NAME"
    INVALID_SCOPE = "INVALID_SCOPE"
    # Sessions (auth/sessions.py). An access token or refresh token whose
    # session was revoked (logout, DeleteSession, a reused refresh token).
    SESSION_REVOKED = "SESSION_REVOKED"
    # A refresh token whose session expired (unused too long, or too old).
    SESSION_EXPIRED = "SESSION_EXPIRED"
    # A refresh token that was never issued (or whose session is long gone).
    REFRESH_TOKEN_INVALID = "REFRESH_TOKEN_INVALID"
    # A refresh token used a second time: its session is revoked.
    REFRESH_TOKEN_REUSED = "REFRESH_TOKEN_REUSED"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    # media
    INVALID_OPTIONS = "INVALID_OPTIONS"
    INVALID_FORM = "INVALID_FORM"
    UPLOAD_EMPTY = "UPLOAD_EMPTY"
    UPLOAD_TOO_LARGE = "UPLOAD_TOO_LARGE"
    UPLOAD_CANCELLED = "UPLOAD_CANCELLED"
    TOO_MANY_UPLOADS = "TOO_MANY_UPLOADS"
    INVALID_JOB_ID = "INVALID_JOB_ID"
    INVALID_PAGE = "INVALID_PAGE"
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    JOB_NOT_DONE = "JOB_NOT_DONE"
    MP3_EXPIRED = "MP3_EXPIRED"
    # DownloadMp3: a track the job does not have / a negative one.
    TRACK_NOT_FOUND = "TRACK_NOT_FOUND"
    INVALID_TRACK = "INVALID_TRACK"
    INVALID_FILTER = "INVALID_FILTER"
    INVALID_REQUEST_ID = "INVALID_REQUEST_ID"
    TOO_MANY_WATCHERS = "TOO_MANY_WATCHERS"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    STORAGE_FULL = "STORAGE_FULL"
    # Limits per job and quotas per user (domain/limits.py, gateway/quotas.py).
    AUDIO_TOO_LONG = "AUDIO_TOO_LONG"
    MP3_TOO_LARGE = "MP3_TOO_LARGE"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    # The gateway could not ask auth whether the caller's user still exists.
    AUTH_UNAVAILABLE = "AUTH_UNAVAILABLE"
    # resumable uploads (tus: gateway/tus.py)
    UPLOAD_NOT_FOUND = "UPLOAD_NOT_FOUND"
    UPLOAD_EXPIRED = "UPLOAD_EXPIRED"
    UPLOAD_OFFSET_MISMATCH = "UPLOAD_OFFSET_MISMATCH"
    UPLOAD_LOCKED = "UPLOAD_LOCKED"
    UPLOAD_IN_PROGRESS = "UPLOAD_IN_PROGRESS"
    INVALID_UPLOAD_HEADER = "INVALID_UPLOAD_HEADER"
    TUS_VERSION_UNSUPPORTED = "TUS_VERSION_UNSUPPORTED"
    UNSUPPORTED_CONTENT_TYPE = "UNSUPPORTED_CONTENT_TYPE"
    # webhooks (gateway/webhooks.py)
    INVALID_WEBHOOK = "INVALID_WEBHOOK"
    WEBHOOK_NOT_FOUND = "WEBHOOK_NOT_FOUND"
    DELIVERY_NOT_FOUND = "DELIVERY_NOT_FOUND"
    TOO_MANY_WEBHOOKS = "TOO_MANY_WEBHOOKS"
    # any server
    DEPENDENCY_UNAVAILABLE = "DEPENDENCY_UNAVAILABLE"
    SERVER_STOPPING = "SERVER_STOPPING"
    INTERNAL = "INTERNAL"


class Violation(NamedTuple):
    """A google.rpc.BadRequest field violation."""
    field: str
    description: str


class ServiceError(GrpcException):
    """Ends the RPC with `status_code`, `message` and the details described above.

    metadata: ErrorInfo.metadata (e.g. the job id; values become strings); trailers: extra trailing
    metadata (e.g. `x-http-status`, read by deploy/envoy.yaml's Lua filter)."""

    status_code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, reason: str,
                 violations: Iterable[tuple[str, str]] = (),
                 retry_after_s: float | None = None,
                 metadata: Mapping[str, object] | None = None,
                 trailers: Sequence[tuple[str, str]] = ()):
        super().__init__(details=message)
        self.args = (message,)  # GrpcException leaves str(e) empty
        self.reason = str(reason)
        self.violations = [Violation(*v) for v in violations]
        self.retry_after_s = retry_after_s
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}
        self.trailers = tuple(trailers)

    @property
    def message(self) -> str:
        return self.details


class InvalidArgument(ServiceError):
    status_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    status_code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(ServiceError):
    status_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    status_code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(ServiceError):
    status_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    status_code = grpc.StatusCode.UNAVAILABLE


class Cancelled(ServiceError):
    status_code = grpc.StatusCode.CANCELLED


class Internal(ServiceError):
    status_code = grpc.StatusCode.INTERNAL


class DependencyUnavailable(Exception):
    """Base for a dependency's own "cannot reach it" error (auth's
    DatabaseUnavailable). str(e) is the diagnosis, for the log; callers get
    `message` and `reason`, as UNAVAILABLE with a retry delay."""
    message = "a service we depend on is unavailable; try again shortly"
    reason = Reason.DEPENDENCY_UNAVAILABLE


def as_service_error(ex: BaseException) -> ServiceError | None:
    """The ServiceError an exception stands for; None if it is unexpected."""
    if isinstance(ex, ServiceError):
        return ex
    if isinstance(ex, DependencyUnavailable):
        return Unavailable(ex.message, reason=ex.reason, retry_after_s=DEPENDENCY_RETRY_S)
    if isinstance(ex, pymongo.errors.PyMongoError):
        return Unavailable("storage is unavailable; try again shortly",
                           reason=Reason.STORAGE_UNAVAILABLE, retry_after_s=DEPENDENCY_RETRY_S)
    return None


def to_proto(err: ServiceError) -> status_pb2.Status:
    status = status_pb2.Status(code=err.status_code.value[0], message=err.message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(
        reason=err.reason, domain=DOMAIN, metadata=err.metadata))
    if err.violations:
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in err.violations]))
    if err.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(err.retry_after_s * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


class _Status(collections.namedtuple("_Status", ("code", "details", "trailing_metadata")),
              grpc.Status):
    pass


def to_status(err: ServiceError) -> grpc.Status:
    """What context.abort_with_status() takes: grpc-status-details-bin plus err.trailers."""
    s = rpc_status.to_status(to_proto(err))
    return _Status(s.code, s.details, tuple(s.trailing_metadata) + err.trailers)


class ErrorInterceptor(ExceptionToStatusInterceptor):
    """Ends every RPC that raised with a rich status (first in the chain, so
    it also sees other interceptors' errors), streaming RPCs included."""

    def intercept(self, method, request_or_iterator, context, method_name):
        with self._handle_exception(request_or_iterator, context, method_name):
            response = method(request_or_iterator, context)
        # A response stream is an iterator (grpcio calls next() on it); the base
        # class tests for Iterable, which a unary `bytes` response is too.
        if isinstance(response, collections.abc.Iterator):
            return self._generate_responses(request_or_iterator, context, method_name, response)
        return response

    def handle_exception(self, ex, request_or_iterator, context, method_name):
        if context.code() is not None:  # aborted already
            raise ex
        err = as_service_error(ex)
        if err is None:
            if not context.is_active():
                # The client cancelled or its deadline passed: grpcio raised
                # from the request iterator, and stays quiet about its own error.
                raise ex
            log.exception("%s failed", method_name)
            err = Internal("internal error", reason=Reason.INTERNAL)
        elif err is not ex:
            log.warning("%s: %s: %s", method_name, err.message, ex)
        context.abort_with_status(to_status(err))
