"""The REST surface as an OpenAPI 3.0 document, from gen/descriptor.pb:
`python tools/openapi.py DESCRIPTOR OUT` (tools/codegen.py runs it).

No maintained generator works offline here (grpc-gateway's
protoc-gen-openapiv2 is a Go binary, and it describes grpc-gateway's JSON,
not Envoy's), so this reads what Envoy's transcoder reads and renders what it
serves (deploy/envoy.yaml):

  - every google.api.http rule and additional binding is an operation;
    path variables are path parameters, the fields neither in the path nor in
    the body are query parameters (Envoy rejects any other);
  - messages are JSON schemas with the proto field names
    (preserve_proto_field_names), every primitive field present in answers
    (always_print_primitive_fields), enums as their names, 64-bit integers
    as strings, Timestamp as a date-time string, OUTPUT_ONLY as readOnly,
    REQUIRED as required in request bodies;
  - google.api.HttpBody is a raw body, any other body field (AIP-133's
    `body: "api_key"`) its message as JSON; errors are google.rpc.Status JSON
    (convert_grpc_status).

  - a server-streaming RPC that returns messages (WatchJob) is one JSON
    array written as the messages come: `[{...}`, `,{...}`, ..., `]`.

What the .proto files cannot say is in PUBLIC and EXTRA below: which RPCs
need no token (SignUp, Login, GetJwks, GetHealth, RefreshSession,
RevokeSession), and what Envoy (its Lua filter, its edge rate limit) and the
services add: the seed's text/plain /login and multipart /upload, the MP3's
media type and Content-Disposition, the empty answers of the Delete RPCs,
and the statuses the transcoder's table does not give (409/410 via
x-http-status, 413, 429 with Retry-After, 503 from /health). RPCs without a REST binding are listed in GRPC_ONLY; any
other RPC without one, or an EXTRA entry naming no binding, is an error, so
a new RPC cannot be left out unnoticed. Comments become descriptions.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2

SERVICES = ["video2mp3.auth.v1.AuthService", "video2mp3.media.v1.MediaService"]
TITLE = "video2mp3 REST API"
PUBLIC = {
    "video2mp3.auth.v1.AuthService.SignUp",
    "video2mp3.auth.v1.AuthService.Login",
    "video2mp3.auth.v1.AuthService.GetJwks",
    "video2mp3.media.v1.MediaService.GetHealth",
    # The refresh token in the body is the credential (RFC 6749 §6, RFC 7009).
    "video2mp3.auth.v1.AuthService.RefreshSession",
    "video2mp3.auth.v1.AuthService.RevokeSession",
    "video2mp3.media.v1.MediaService.DescribeUploads",
}
# RPCs with no google.api.http binding, on purpose.
GRPC_ONLY = {"video2mp3.media.v1.MediaService.DeleteMyData"}
JSON = "application/json"
F = descriptor_pb2.FieldDescriptorProto

RETRY_AFTER = {"Retry-After": {
    "description": "seconds to wait before trying again", "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
# Envoy's local_ratelimit on the route (deploy/envoy.yaml), before auth is asked.
EDGE_LIMITED = {"description": "too many requests: Envoy's edge limit for this RPC, or (Login) too many "
                               "failed logins for the account or address; RetryInfo says when to retry",
                "headers": RETRY_AFTER}
EMPTY = {JSON: {"schema": {"type": "object", "additionalProperties": False, "maxProperties": 0,
                           "description": "an empty object: {}"}}}


def _header(description: str, schema: dict | None = None, required: bool = True) -> dict:
    return {"description": description, "required": required, "schema": schema or {"type": "string"}}


def _param(name: str, description: str, schema: dict, required: bool = True) -> dict:
    return {"name": name, "in": "header", "required": required, "description": description, "schema": schema}


# tus 1.0 (gateway/tus.py): the protocol lives in HTTP headers, which the
# transcoder passes as gRPC metadata both ways; statuses come from x-http-status.
UINT = {"type": "integer", "format": "int64", "minimum": 0}
TUS_RESUMABLE = _param("Tus-Resumable", "the tus version the client speaks (tus clients always send it)",
                       {"type": "string", "enum": ["1.0.0"]}, required=False)
TUS_ANSWER = {"Tus-Resumable": _header("1.0.0", {"type": "string", "enum": ["1.0.0"]})}
TUS_412 = {"description": "Tus-Resumable names a version this server does not speak (Tus-Version says which)",
           "headers": {"Tus-Version": _header("the versions spoken: 1.0.0")}}
TUS_OFFSETS = {**TUS_ANSWER,
               "Upload-Offset": _header("bytes stored so far", {"type": "string", "pattern": "^[0-9]+$"}),
               "Upload-Length": _header("the upload's size", {"type": "string", "pattern": "^[0-9]+$"}),
               "Cache-Control": _header("no-store"),
               "Upload-Expires": _header("when an incomplete upload is deleted (an HTTP date)", required=False)}
TUS_GONE = "the upload expired (it is deleted with everything written)"
TUS_STATUSES = {"412": TUS_412, "410": TUS_GONE}

# Per binding (RPC full name, HTTP path; "*" for all its bindings): what
# Envoy and the services add. "statuses": HTTP status -> a description, or
# {"description", "headers"}; the body is a google.rpc.Status.
EXTRA: dict[tuple[str, str], dict[str, Any]] = {
    ("video2mp3.auth.v1.AuthService.SignUp", "*"): {"statuses": {"429": EDGE_LIMITED}},
    ("video2mp3.auth.v1.AuthService.Login", "*"): {"statuses": {"429": EDGE_LIMITED}},
    ("video2mp3.auth.v1.AuthService.Login", "/login"): {
        "summary": "The Flask seed's login: Basic credentials in, the bare token out as text.",
        "security": [{"basicAuth": []}],
        "ok_content": {"text/plain": {"schema": {"type": "string", "description": "the access token (a JWT)"}}},
    },
    ("video2mp3.auth.v1.AuthService.DeleteMe", "*"): {"ok_content": EMPTY},
    ("video2mp3.auth.v1.AuthService.DeleteApiKey", "*"): {"ok_content": EMPTY},
    ("video2mp3.auth.v1.AuthService.DeleteSession", "*"): {"ok_content": EMPTY},
    ("video2mp3.auth.v1.AuthService.RevokeSession", "*"): {"ok_content": EMPTY},
    ("video2mp3.auth.v1.AuthService.GetJwks", "*"): {
        "summary": "The JSON Web Key Set (RFC 7517) that verifies access tokens; needs no token.",
    },
    ("video2mp3.media.v1.MediaService.UploadVideo", "*"): {
        "statuses": {"413": "upload too large, or its audio over a limit per job (reason AUDIO_TOO_LONG, "
                            "MP3_TOO_LARGE)",
                     "429": "too many uploads in progress, or a quota used up (reason QUOTA_EXCEEDED); RetryInfo "
                            "says when to retry"}
    },
    ("video2mp3.media.v1.MediaService.UploadVideo", "/upload"): {
        "summary": "The Flask seed's upload: a multipart/form-data body whose `file` part is the video.",
        "request_content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    },
    ("video2mp3.media.v1.MediaService.WatchJob", "*"): {
        "statuses": {"429": "too many watchers on this gateway; RetryInfo says when to retry"}
    },
    ("video2mp3.media.v1.MediaService.DeleteJob", "*"): {"ok_content": EMPTY},
    ("video2mp3.media.v1.MediaService.DownloadMp3", "*"): {
        # A job split by chapter answers its MP3s as one ZIP when no track is given.
        "ok_content": {t: {"schema": {"type": "string", "format": "binary"}}
                       for t in ("audio/mpeg", "application/zip")},
        "ok_headers": {
            "Content-Disposition": {
                "description": "attachment; the upload's name with .mp3 (.zip): an ASCII filename, "
                               "then filename*=UTF-8''...",
                "schema": {"type": "string"},
            }
        },
        "statuses": {
            "409": "the job is not DONE yet (FAILED_PRECONDITION, reason JOB_NOT_DONE)",
            "410": "the MP3 expired and was deleted (FAILED_PRECONDITION, reason MP3_EXPIRED)",
        },
    },
    ("video2mp3.media.v1.MediaService.ZipJobs", "*"): {
        "ok_media_type": "application/zip",
        "ok_headers": {"Content-Disposition": {"description": "attachment; filename=\"video2mp3.zip\"",
                                               "schema": {"type": "string"}}},
        "statuses": {"409": "a job is not DONE, or its MP3 expired (FAILED_PRECONDITION; the message names them)"},
    },
    ("video2mp3.media.v1.MediaService.DescribeUploads", "*"): {
        "summary": "tus OPTIONS: the tus version, extensions and maximum upload size.",
        "ok_status": "204", "ok_content": None,
        "ok_headers": {**TUS_ANSWER, "Tus-Version": _header("1.0.0"),
                       "Tus-Extension": _header("creation,termination,expiration"),
                       "Tus-Max-Size": _header("MAX_UPLOAD_BYTES", {"type": "string", "pattern": "^[0-9]+$"})},
    },
    ("video2mp3.media.v1.MediaService.CreateUpload", "*"): {
        "summary": "tus creation: a new resumable upload of Upload-Length bytes.",
        "headers": [TUS_RESUMABLE,
                    _param("Upload-Length", "the file's size in bytes (at most MAX_UPLOAD_BYTES)",
                           {**UINT, "minimum": 1}),
                    _param("Upload-Metadata", "comma-separated `key base64(value)` pairs: filename, "
                           "bitrate_kbps, vbr_quality, channels, sample_rate_hz, audio_track, start_ms, end_ms, "
                           "loudness_lufs, cover_art, split_chapters, request_id",
                           {"type": "string"}, required=False)],
        # No body: creation-with-upload is not offered (a body sent is ignored).
        "request_content": {"application/octet-stream": {"schema": {"type": "string", "maxLength": 0}}},
        "request_optional": True,
        "ok_status": "201",
        "ok_headers": {**TUS_ANSWER, "Location": _header("/v1/uploads/{upload_id}"),
                       "Upload-Expires": _header("when the upload is deleted unless complete (an HTTP date)",
                                                 required=False)},
        "statuses": {"409": "an upload with this request_id is still in progress (UploadVideo); retry",
                     "412": TUS_412, "413": "Upload-Length is over MAX_UPLOAD_BYTES (Tus-Max-Size)",
                     "429": "Upload-Length does not fit in the caller's storage quota (reason QUOTA_EXCEEDED)",
                     "507": "the store's disk is nearly full"},
    },
    ("video2mp3.media.v1.MediaService.GetUpload", "*"): {
        "headers": [TUS_RESUMABLE], "ok_headers": TUS_OFFSETS, "statuses": TUS_STATUSES},
    ("video2mp3.media.v1.MediaService.GetUpload", "/v1/uploads/{upload_id}#HEAD"): {
        "summary": "tus HEAD: the upload's offset, to resume from.", "ok_content": None},
    ("video2mp3.media.v1.MediaService.AppendUpload", "*"): {
        "summary": "tus PATCH: append the body at Upload-Offset.",
        "headers": [TUS_RESUMABLE, _param("Upload-Offset", "where the body goes: the upload's offset", UINT)],
        "request_content": {"application/offset+octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "ok_status": "204", "ok_content": None,
        "ok_headers": {**TUS_ANSWER, "Upload-Offset": TUS_OFFSETS["Upload-Offset"]},
        "statuses": {**TUS_STATUSES, "409": "Upload-Offset is not the upload's offset (HEAD says where to go on)",
                     "413": "the body goes past Upload-Length; or, at the last byte, the file declares audio over "
                            "a limit per job (reason AUDIO_TOO_LONG, MP3_TOO_LARGE; the upload is deleted)",
                     "415": "the body is not application/offset+octet-stream",
                     "423": "another PATCH to this upload is running; retry",
                     "429": "too many uploads in progress, or, at the last byte, the audio declared is over the "
                            "minutes quota (QUOTA_EXCEEDED; the upload is deleted); RetryInfo says when to retry",
                     "507": "the store's disk is nearly full"},
    },
    ("video2mp3.media.v1.MediaService.DeleteUpload", "*"): {
        "summary": "tus termination: delete the upload and everything written.",
        "headers": [TUS_RESUMABLE], "ok_status": "204", "ok_content": None, "ok_headers": TUS_ANSWER,
        "statuses": {"412": TUS_412}},
    ("video2mp3.media.v1.MediaService.CreateWebhook", "*"): {"statuses": {
        "429": "the most webhooks a user may have exist already (reason TOO_MANY_WEBHOOKS)"}},
    ("video2mp3.media.v1.MediaService.DeleteWebhook", "*"): {"ok_content": EMPTY},
    ("video2mp3.media.v1.MediaService.GetHealth", "/health"): {
        "statuses": {"503": "a dependency is down; the same body says which"},
        "health": True,
    },
}
# Well-known types as Envoy prints them.
WKT: dict[str, dict[str, Any]] = {
    ".google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    ".google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
    ".google.protobuf.Empty": {"type": "object"},
    ".google.protobuf.Any": {"type": "object", "required": ["@type"],
                             "properties": {"@type": {"type": "string"}}, "additionalProperties": True},
}
INT32 = {F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32}
UINT32 = {F.TYPE_UINT32, F.TYPE_FIXED32}
INT64 = {F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64, F.TYPE_UINT64, F.TYPE_FIXED64}


class Protos:
    """Messages, enums and comments of a descriptor set, by full name."""

    def __init__(self, fds: descriptor_pb2.FileDescriptorSet):
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.services: dict[str, descriptor_pb2.ServiceDescriptorProto] = {}
        self.comments: dict[str, str] = {}  # full name (fields: message.field) -> comment
        for f in fds.file:
            where = {tuple(loc.path): loc.leading_comments for loc in f.source_code_info.location}
            pkg = f".{f.package}" if f.package else ""
            for i, m in enumerate(f.message_type):
                self._message(m, pkg, (4, i), where)
            for i, e in enumerate(f.enum_type):
                self._enum(e, pkg, (5, i), where)
            for i, s in enumerate(f.service):
                name = f"{pkg}.{s.name}"
                self.services[name[1:]] = s
                self.comments[name] = where.get((6, i), "")
                for j, m in enumerate(s.method):
                    self.comments[f"{name}.{m.name}"] = where.get((6, i, 2, j), "")

    def _message(self, m, prefix: str, path: tuple, where: dict) -> None:
        name = f"{prefix}.{m.name}"
        self.messages[name] = m
        self.comments[name] = where.get(path, "")
        for j, field in enumerate(m.field):
            self.comments[f"{name}.{field.name}"] = where.get((*path, 2, j), "")
        for j, nested in enumerate(m.nested_type):
            self._message(nested, name, (*path, 3, j), where)
        for j, e in enumerate(m.enum_type):
            self._enum(e, name, (*path, 4, j), where)

    def _enum(self, e, prefix: str, path: tuple, where: dict) -> None:
        name = f"{prefix}.{e.name}"
        self.enums[name] = e
        self.comments[name] = where.get(path, "")


def _text(comment: str) -> str:
    """A proto comment as a description: buf lint directives dropped, lines joined."""
    lines = [ln.strip() for ln in comment.splitlines() if not ln.strip().startswith("buf:lint")]
    return re.sub(r"(?<!\n)\n(?!\n)", " ", "\n".join(lines).strip())


def _behaviors(field) -> set[int]:
    return set(field.options.Extensions[field_behavior_pb2.field_behavior])


def _schema_name(full: str) -> str:
    return full.lstrip(".")


class Builder:
    def __init__(self, protos: Protos):
        self.p = protos
        self.schemas: dict[str, dict] = {}
        self.request_types: set[str] = set()

    def ref(self, full: str) -> dict:
        if full in WKT:
            return dict(WKT[full])
        name = _schema_name(full)
        if name not in self.schemas:
            self.schemas[name] = {}  # reserve: recursive messages
            self.schemas[name] = self._build(full)
        return {"$ref": f"#/components/schemas/{name}"}

    def _build(self, full: str) -> dict:
        if full in self.p.enums:
            e = self.p.enums[full]
            return {"type": "string", "enum": [v.name for v in e.value],
                    "description": _text(self.p.comments.get(full, ""))}
        m = self.p.messages[full]
        props: dict[str, dict] = {}
        printed, required = [], []
        for field in m.field:
            schema = self.field_schema(field)
            behaviors = _behaviors(field)
            notes: dict[str, Any] = {}
            if desc := _text(self.p.comments.get(f"{full}.{field.name}", "")):
                notes["description"] = desc
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                notes["readOnly"] = True
            # OpenAPI 3.0 ignores a $ref's siblings.
            props[field.name] = {"allOf": [schema], **notes} if "$ref" in schema and notes else {**schema, **notes}
            if field_behavior_pb2.REQUIRED in behaviors:
                required.append(field.name)
            # Envoy prints these even when empty; message and proto3 `optional` fields only when set.
            if field.label == F.LABEL_REPEATED or (field.type != F.TYPE_MESSAGE
                                                   and not field.HasField("oneof_index")):
                printed.append(field.name)
        out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        if _text(self.p.comments.get(full, "")):
            out["description"] = _text(self.p.comments[full])
        out["x-required-in-requests"] = required
        out["x-printed"] = printed
        return out

    def field_schema(self, field) -> dict:
        if field.type == F.TYPE_MESSAGE:
            entry = self.p.messages.get(field.type_name)
            if entry is not None and entry.options.map_entry:
                value = next(f for f in entry.field if f.name == "value")
                return {"type": "object", "additionalProperties": self.field_schema(value)}
            one = self.ref(field.type_name)
        elif field.type == F.TYPE_ENUM:
            one = self.ref(field.type_name)
        else:
            one = scalar(field.type)
        return {"type": "array", "items": one} if field.label == F.LABEL_REPEATED else one

    def finish(self) -> dict[str, dict]:
        """Request bodies list their REQUIRED fields; answers every field Envoy always prints."""
        for name, schema in self.schemas.items():
            if "x-printed" not in schema:
                continue
            printed, required = schema.pop("x-printed"), schema.pop("x-required-in-requests")
            keep = required if name in self.request_types else printed
            if keep:
                schema["required"] = keep
        return self.schemas


def scalar(t: int) -> dict:
    if t in INT32:
        return {"type": "integer", "format": "int32"}
    if t in UINT32:
        return {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
    if t in INT64:  # proto3 JSON: 64-bit integers are strings
        return {"type": "string", "format": "int64", "pattern": r"^-?[0-9]+$"}
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return {"type": "number"}
    if t == F.TYPE_BOOL:
        return {"type": "boolean"}
    if t == F.TYPE_BYTES:
        return {"type": "string", "format": "byte"}
    return {"type": "string"}


def _bindings(rule: http_pb2.HttpRule) -> list[tuple[str, str, str]]:
    """(method, path, body) of a rule and its additional bindings."""
    out = []
    for r in [rule, *rule.additional_bindings]:
        kind = r.WhichOneof("pattern")
        if kind == "custom":
            out.append((r.custom.kind.lower(), r.custom.path, r.body))
        elif kind:
            out.append((kind, getattr(r, kind), r.body))
    return out


def _path_fields(template: str) -> tuple[str, list[str]]:
    """/v1/jobs/{job_id=*}/mp3 -> (/v1/jobs/{job_id}/mp3, [job_id])."""
    names = re.findall(r"\{([^}=]+)(?:=[^}]*)?\}", template)
    return re.sub(r"\{([^}=]+)(?:=[^}]*)?\}", r"{\1}", template), names


def _query_params(b: Builder, message: str, skip: set[str], prefix: str = "") -> list[dict]:
    params = []
    for field in b.p.messages[message].field:
        name = prefix + field.name
        if name in skip or field.type_name == ".google.api.HttpBody":
            continue
        if field.type == F.TYPE_MESSAGE and field.type_name not in WKT and field.label != F.LABEL_REPEATED:
            params += _query_params(b, field.type_name, skip, name + ".")
            continue
        param = {"name": name, "in": "query", "required": False, "schema": b.field_schema(field)}
        if field.label == F.LABEL_REPEATED:
            param.update(style="form", explode=True)
        desc = _text(b.p.comments.get(f"{message}.{field.name}", ""))
        if desc:
            param["description"] = desc
        params.append(param)
    return params


def _error_response(description: str) -> dict:
    return {"description": description,
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}}}}


def build(fds: descriptor_pb2.FileDescriptorSet, version: str = "v1") -> dict:
    protos = Protos(fds)
    b = Builder(protos)
    paths: dict[str, dict] = {}
    used: set[tuple[str, str]] = set()
    for service_name in SERVICES:
        for method in protos.services[service_name].method:
            full = f"{service_name}.{method.name}"
            rule = method.options.Extensions[annotations_pb2.http]
            if not _bindings(rule) and full not in GRPC_ONLY:
                raise ValueError(f"{full} has no google.api.http binding and is not in GRPC_ONLY")
            for index, (verb, template, body) in enumerate(_bindings(rule)):
                path, path_names = _path_fields(template)
                # A binding is `path`, or `path#VERB` where one path has several verbs.
                key = path if (full, path) in EXTRA else f"{path}#{verb.upper()}"
                used.update({(full, "*"), (full, key)})
                paths.setdefault(path, {})[verb] = _operation(b, service_name, method, index, key, verb,
                                                              path_names, body)
    if stale := set(EXTRA) - used:
        raise ValueError(f"EXTRA names bindings that do not exist: {sorted(stale)}")
    return _document(b.finish(), paths, version)


def _extra(full: str, path: str) -> dict[str, Any]:
    """EXTRA for one binding: the RPC's entry, then the path's, their statuses merged."""
    every, this = EXTRA.get((full, "*"), {}), EXTRA.get((full, path), {})
    return {**every, **this, "statuses": {**every.get("statuses", {}), **this.get("statuses", {})}}


def _operation(
    b: Builder,
    service_name: str,
    method: descriptor_pb2.MethodDescriptorProto,
    index: int,
    key: str,
    verb: str,
    path_names: list[str],
    body: str,
) -> dict[str, Any]:
    """The index-th binding of an RPC as an OpenAPI operation; `key` names it in EXTRA."""
    full = f"{service_name}.{method.name}"
    short_service = service_name.rsplit(".", 1)[-1]
    extra = _extra(full, key)
    description = _text(b.p.comments[f".{full}"])
    op: dict[str, Any] = {
        "operationId": f"{short_service}_{method.name}" + (f"_{index}" if index else ""),
        "tags": [short_service],
        "summary": extra.get("summary") or description.split(". ")[0],
        "description": description,
    }
    if params := _parameters(b, method.input_type, path_names, body) + extra.get("headers", []):
        op["parameters"] = params
    if request_body := _request_body(b, method.input_type, body, extra):
        op["requestBody"] = request_body
    op["responses"] = _responses(b, method, verb, extra)
    if full in PUBLIC:
        op["security"] = extra.get("security", [])
    elif "security" in extra:
        op["security"] = extra["security"]
    return op


def _parameters(b: Builder, request: str, path_names: list[str], body: str) -> list[dict]:
    """Path variables, then (unless the body is the whole message) the other fields as query parameters."""
    params = []
    for name in path_names:
        field = next(f for f in b.p.messages[request].field if f.name == name)
        params.append({"name": name, "in": "path", "required": True, "schema": b.field_schema(field)})
    if body != "*":
        params += _query_params(b, request, set(path_names) | {body})
    return params


def _request_body(b: Builder, request: str, body: str, extra: dict[str, Any]) -> dict | None:
    if body == "*":
        b.request_types.add(_schema_name(request))
        return {"required": True, "content": {JSON: {"schema": b.ref(request)}}}
    body_type = next((f.type_name for f in b.p.messages[request].field if f.name == body), "")
    if body and body_type != ".google.api.HttpBody":
        # One field is the body (AIP-133's `body: "api_key"`): its message as JSON.
        b.request_types.add(_schema_name(body_type))
        return {"required": True, "content": {JSON: {"schema": b.ref(body_type)}}}
    if body:
        return {
            "required": not extra.get("request_optional"),
            "content": extra.get("request_content")
            or {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "*/*": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    return None


def _ok_response(b: Builder, method: descriptor_pb2.MethodDescriptorProto, extra: dict[str, Any]) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if "ok_content" in extra:
        if extra["ok_content"] is not None:  # None: no body (204, HEAD)
            ok["content"] = extra["ok_content"]
    elif method.output_type == ".google.api.HttpBody":
        ok["content"] = {extra.get("ok_media_type", "*/*"): {"schema": {"type": "string", "format": "binary"}}}
    elif method.server_streaming:
        # The transcoder writes the stream as one JSON array, element by element.
        ok["description"] = (
            "OK: a JSON array written as the stream goes, one element per "
            "message; a stream broken off after the first one ends without `]`"
        )
        ok["content"] = {JSON: {"schema": {"type": "array", "items": b.ref(method.output_type)}}}
    else:
        ok["content"] = {JSON: {"schema": b.ref(method.output_type)}}
    if "ok_headers" in extra:
        ok["headers"] = extra["ok_headers"]
    return ok


def _responses(
    b: Builder, method: descriptor_pb2.MethodDescriptorProto, verb: str, extra: dict[str, Any]
) -> dict[str, Any]:
    """The operation's answers: its OK (status, body, headers) and its errors."""
    ok = _ok_response(b, method, extra)
    responses: dict[str, Any] = {extra.get("ok_status", "200"): ok}
    for status, why in sorted(extra["statuses"].items()):
        info = why if isinstance(why, dict) else {"description": why}
        responses[status] = (
            {"description": info["description"], "content": ok["content"]}
            if extra.get("health")
            else _error_response(info["description"])
        )
        if verb == "head":  # a HEAD answer has no body, errors neither
            responses[status].pop("content", None)
        if "headers" in info:
            responses[status]["headers"] = info["headers"]
    responses["default"] = _error_response("An error: the gRPC status as its HTTP status, a google.rpc.Status body")
    if verb == "head":
        responses["default"].pop("content")
    return responses


def _document(schemas: dict[str, dict], paths: dict[str, dict], version: str) -> dict:
    schemas["google.rpc.Status"] = {
        "type": "object",
        "description": "An error (google.rpc.Status): code is the gRPC status code; details hold "
                       "google.rpc.ErrorInfo (reason), BadRequest (field_violations), RetryInfo (retry_delay).",
        "required": ["code", "message"],
        "properties": {"code": {"type": "integer", "format": "int32"}, "message": {"type": "string"},
                       "details": {"type": "array", "items": WKT[".google.protobuf.Any"]}},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": TITLE,
            "version": version,
            "description": "Generated from protos/ by tools/openapi.py; served by Envoy's gRPC-JSON "
            "transcoder. The same API is gRPC on the same port.",
        },
        "servers": [{"url": "http://localhost:8000"}],
        "security": [{"bearerAuth": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT or API key",
                    "description": "access_token from POST /v1/login or POST /v1/sessions:refresh, "
                    "or an API key (v2m_...) from POST /v1/apiKeys",
                },
                "basicAuth": {"type": "http", "scheme": "basic"},
            },
        },
    }


def main(descriptor: str, out: str) -> None:
    fds = descriptor_pb2.FileDescriptorSet.FromString(Path(descriptor).read_bytes())
    Path(out).write_text(json.dumps(build(fds), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:3])
