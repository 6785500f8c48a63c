"""core/errors.py: exceptions become rich statuses (code, message, details).
Pure conversion first, then through a real in-process server built by
rpc/server.build_server: unary, client- and server-streaming RPCs and
an interceptor's error."""
from __future__ import annotations

import logging
import socket

import grpc
import pymongo.errors
import pytest
from grpc_interceptor import ServerInterceptor
from grpc_status import rpc_status

from testkit.status import details
from video2mp3.auth.users import DatabaseUnavailable
from video2mp3.core import errors
from video2mp3.core.errors import Reason
from video2mp3.rpc import server as grpc_server


def test_error_info_always_bad_request_with_violations_retry_info_with_a_delay():
    err = errors.InvalidArgument("bitrate_kbps must be one of ...", reason=Reason.INVALID_OPTIONS,
                                 violations=[("bitrate_kbps", "bitrate_kbps must be one of ...")])
    s = errors.to_proto(err)
    assert (s.code, s.message) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], str(err))
    d = details(s)
    assert set(d) == {"ErrorInfo", "BadRequest"}
    assert (d["ErrorInfo"].reason, d["ErrorInfo"].domain) == ("INVALID_OPTIONS", errors.DOMAIN)
    assert [(v.field, v.description) for v in d["BadRequest"].field_violations] == [
        ("bitrate_kbps", "bitrate_kbps must be one of ...")]

    busy = errors.ResourceExhausted("too many", reason=Reason.TOO_MANY_UPLOADS, retry_after_s=2.5,
                                    metadata={"limit": 8})
    d = details(errors.to_proto(busy))
    assert set(d) == {"ErrorInfo", "RetryInfo"}
    assert d["ErrorInfo"].metadata == {"limit": "8"}
    assert d["RetryInfo"].retry_delay.ToMilliseconds() == 2500


@pytest.mark.parametrize(("cls", "code"), [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Cancelled, grpc.StatusCode.CANCELLED),
    (errors.Internal, grpc.StatusCode.INTERNAL),
])
def test_each_class_has_its_code_and_the_status_round_trips(cls, code):
    err = cls("what to do next", reason="SOME_REASON", trailers=[("x-http-status", "413")])
    status = errors.to_status(err)
    assert (status.code, status.details) == (code, "what to do next")
    md = dict(status.trailing_metadata)
    assert md["x-http-status"] == "413"
    back = rpc_status.status_pb2.Status.FromString(md["grpc-status-details-bin"])
    assert back == errors.to_proto(err)


def test_a_full_store_disk_is_resource_exhausted_507_storage_full(tmp_path):
    """gateway/storage_space.py's refusal goes the one error path: reason
    STORAGE_FULL, and REST 507 through the x-http-status trailer."""
    from video2mp3.gateway.storage_space import StorageFull, StorageSpace

    StorageSpace(None, data_dir=tmp_path, reserve_bytes=0).check()  # 0: never refused
    with pytest.raises(StorageFull) as info:
        StorageSpace(None, data_dir=tmp_path, reserve_bytes=2**62).guard()  # checks at once
    err = info.value
    assert errors.as_service_error(err) is err
    status = errors.to_status(err)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.details.startswith("video storage is full")
    assert dict(status.trailing_metadata)["x-http-status"] == "507"
    assert details(errors.to_proto(err))["ErrorInfo"].reason == "STORAGE_FULL"


def test_dependency_errors_are_unavailable_with_a_retry_delay():
    mongo = errors.as_service_error(pymongo.errors.ServerSelectionTimeoutError("no servers"))
    mysql = errors.as_service_error(DatabaseUnavailable("MySQL at x:3306: lost connection"))
    assert mongo is not None
    assert mysql is not None
    assert (mongo.status_code, mongo.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
    assert mongo.message == "storage is unavailable; try again shortly"
    assert (mysql.status_code, mysql.reason) == (grpc.StatusCode.UNAVAILABLE, "USER_DATABASE_UNAVAILABLE")
    assert mysql.message == "user database unavailable, try again"  # not the diagnosis
    assert "RetryInfo" in details(errors.to_proto(mongo))
    assert errors.as_service_error(KeyError("x")) is None


# -- through a server -------------------------------------------------------------

SERVICE = "test.Errors"


def _raise(ex):
    raise ex


class RejectHeader(ServerInterceptor):
    def intercept(self, method, request_or_iterator, context, method_name):
        if dict(context.invocation_metadata()).get("x-reject"):
            raise errors.Unauthenticated("access token is missing", reason=Reason.TOKEN_INVALID)
        return method(request_or_iterator, context)


def _stream_then_fail(request, context):
    yield b"one"
    yield b"two"
    raise pymongo.errors.AutoReconnect("connection reset")


def _read_all_then_fail(requests, context):
    total = sum(len(r) for r in requests)
    raise errors.ResourceExhausted(f"{total} bytes is too many", reason=Reason.UPLOAD_TOO_LARGE,
                                   trailers=[("x-http-status", "413")])


HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler(
        lambda r, c: _raise(errors.NotFound("job j1 not found", reason=Reason.JOB_NOT_FOUND,
                                            metadata={"job_id": "j1"}))),
    "Ok": grpc.unary_unary_rpc_method_handler(lambda r, c: b"fine"),
    "Bug": grpc.unary_unary_rpc_method_handler(lambda r, c: _raise(KeyError("missing"))),
    "ServerStream": grpc.unary_stream_rpc_method_handler(_stream_then_fail),
    "ClientStream": grpc.stream_unary_rpc_method_handler(_read_all_then_fail),
}


@pytest.fixture(scope="module")
def channel():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    service = grpc_server.Service(
        None, lambda _, server: server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, HANDLERS),)), SERVICE)
    server, _ = grpc_server.build_server([service], port, host="127.0.0.1", max_workers=4,
                                         interceptors=[RejectHeader()])
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    server.stop(None)


def call(channel, method, kind="unary_unary"):
    return getattr(channel, kind)(f"/{SERVICE}/{method}")


def failure(fn) -> tuple[grpc.RpcError, dict]:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    status = rpc_status.from_call(e.value)
    assert status is not None, "no grpc-status-details-bin"
    assert (status.code, status.message) == (e.value.code().value[0], e.value.details())
    return e.value, details(status)


def test_unary_error_carries_its_details(channel):
    err, d = failure(lambda: call(channel, "Unary")(b"", timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "job j1 not found"
    assert d["ErrorInfo"].reason == "JOB_NOT_FOUND"
    assert d["ErrorInfo"].metadata == {"job_id": "j1"}
    assert call(channel, "Ok")(b"", timeout=10) == b"fine"


def test_an_interceptors_error_goes_through_it_too(channel):
    err, d = failure(lambda: call(channel, "Ok")(b"", metadata=[("x-reject", "1")], timeout=10))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert d["ErrorInfo"].reason == "TOKEN_INVALID"


def test_unexpected_exception_is_internal_logged_once(channel, caplog):
    with caplog.at_level(logging.ERROR):
        err, d = failure(lambda: call(channel, "Bug")(b"", timeout=10))
    assert (err.code(), err.details()) == (grpc.StatusCode.INTERNAL, "internal error")
    assert d["ErrorInfo"].reason == "INTERNAL"
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1
    assert "/test.Errors/Bug" in tracebacks[0].getMessage()


def test_server_stream_fails_after_its_messages(channel):
    got = []

    def read():
        got.extend(call(channel, "ServerStream", "unary_stream")(b"", timeout=10))

    err, d = failure(read)
    assert got == [b"one", b"two"]
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert d["ErrorInfo"].reason == "STORAGE_UNAVAILABLE"
    assert "RetryInfo" in d


def test_client_stream_error_keeps_extra_trailers(channel):
    err, d = failure(lambda: call(channel, "ClientStream", "stream_unary")(
        iter([b"ab", b"cde"]), timeout=10))
    assert (err.code(), err.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "5 bytes is too many")
    assert ("x-http-status", "413") in err.trailing_metadata()
    assert d["ErrorInfo"].reason == "UPLOAD_TOO_LARGE"
