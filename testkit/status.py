"""The google.rpc.Status details of a failed call (core/errors.py), for tests."""
from __future__ import annotations

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

KINDS = (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo)


def details(failed: grpc.RpcError | status_pb2.Status) -> dict[str, Message]:
    """{"ErrorInfo" | "BadRequest" | "RetryInfo": the unpacked detail} of a
    failed call or a Status; every detail must be one of those kinds."""
    status = rpc_status.from_call(failed) if isinstance(failed, grpc.RpcError) else failed
    assert status is not None, "no rich status"
    out: dict[str, Message] = {}
    for any_ in status.details:
        for cls in KINDS:
            if any_.Is(cls.DESCRIPTOR):
                msg = cls()
                any_.Unpack(msg)
                out[cls.DESCRIPTOR.name] = msg
    assert len(out) == len(status.details), status
    return out


def reason(failed: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call."""
    info = details(failed).get("ErrorInfo")
    assert isinstance(info, error_details_pb2.ErrorInfo), "no ErrorInfo"
    return info.reason


def rest_details(body: dict) -> dict[str, dict]:
    """REST error details by type name, as Envoy renders google.rpc.Status."""
    return {d["@type"].rsplit(".", 1)[-1]: d for d in body["details"]}
