"""Resumable uploads: the tus 1.0 protocol (core, creation, termination,
expiration) at /v1/uploads, as MediaService RPCs that Envoy transcodes
(docs/webhooks-and-uploads.md has the protocol and what was measured of Envoy).

An upload is two documents and a GridFS file being written:

* its job, created HIDDEN at creation (`uploading: true`, `tus: true`;
  domain/jobs.py) with the upload's options, name and request_id, so the
  upload's id is its job's id and the request_id is unique at once;
* its transfer state in `tus_uploads` ({_id: job id, user_id, video_fid,
  length, offset, tail, filename, content_type, streamable, create_time,
  expire_time, lock_owner, lock_until}); `offset` counts the bytes stored:
  the full GridFS chunks (videos.chunks, written as for any upload) plus
  `tail`, the bytes after the last full chunk, kept in this document (every
  stored chunk of a file being written must be full: storage/gridfs_growing.py
  reads them while they arrive);
* the chunks themselves, without a files document until the last byte.

Nothing is kept in a gateway's memory between two requests, so HEAD and the
next PATCH may reach any gateway, also after a restart. A PATCH takes the
upload's lock (a lease renewed as bytes arrive: one PATCH at a time, 423
otherwise), deletes chunks a killed gateway may have stored past the recorded
offset, and goes on from `offset` and `tail`. While bytes arrive it records
the offset of the chunks stored every CHECKPOINT_S (a gateway killed
mid-PATCH loses at most that much); when the request ends, normally or cut
off, it stores every full chunk and records the exact offset and tail. With
the last byte the file is closed (files document), the job becomes visible
and is published, and the transfer state goes: the upload is its job.

Everything UploadVideo guarantees holds: Upload-Length over MAX_UPLOAD_BYTES
is refused at creation (413) and no PATCH may write past Upload-Length; the
store's disk-space guard runs as chunks are cut (507); each PATCH holds one of
the MAX_CONCURRENT_UPLOADS slots (429); request_id makes creation safe to
retry; a streamable file (gateway/container_sniff.py) is published as soon as
its first bytes say so and converted while it arrives, its job kept alive by
the gateway's upload heartbeat while a PATCH runs (a paused upload's
conversion is given up by the converter and started again by the next PATCH,
jobs.abandon_upload); an incomplete upload expires UPLOAD_EXPIRY_S after its
creation and is deleted with everything written (sweep_expired, from the
gateway's retention sweep), as is a terminated one (DELETE).
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import email.utils
import logging
import time
import uuid
from typing import BinaryIO, cast

import pymongo
import pymongo.errors
from bson import ObjectId
from google.api import httpbody_pb2
from gridfs import DEFAULT_CHUNK_SIZE

from video2mp3.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
    ServiceError,
)
from video2mp3.core.tokens import Caller
from video2mp3.domain import jobs, retention
from video2mp3.formats import durations
from video2mp3.gateway import container_sniff, validation
from video2mp3.gateway.uploads import Uploads, _reset_after_end
from video2mp3.media.v1 import media_pb2
from video2mp3.storage.gridfs_download import RANGE_CHUNKS, ChunkedDownload, delete_chunks
from video2mp3.storage.gridfs_upload import ChunkedUpload
from video2mp3.storage.mongo import VIDEOS_BUCKET, Mongo
from video2mp3.telemetry import metrics, tracing

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,termination,expiration"
OFFSET_STREAM = "application/offset+octet-stream"
COLLECTION = "tus_uploads"
# A PATCH's lock on its upload: renewed with each checkpoint while bytes
# arrive; one whose request died (without the gateway noticing) is taken over
# after this long.
LOCK_S = 10.0
# While bytes arrive, the offset of the chunks stored is recorded this often.
CHECKPOINT_S = 1.0
LOCKED_RETRY_S = 2.0
# Metadata keys read (others, e.g. Uppy's `name`/`type`, are ignored unless below).
OPTION_KEYS = ("bitrate_kbps", "vbr_quality", "channels", "sample_rate_hz", "audio_track", "start_ms", "end_ms",
               "loudness_lufs")
DECIMAL_KEYS = frozenset({"loudness_lufs"})  # the others are integers
FLAG_KEYS = ("cover_art", "split_chapters")
# How a flag may be written (lower-cased): what Envoy's query binding takes, and 1/0.
_FLAG_VALUES = {"true": True, "1": True, "false": False, "0": False}
MAX_METADATA_CHARS = 4096


def _status(code: str) -> list[tuple[str, str]]:
    """Trailing metadata of a tus error: its HTTP status (deploy/envoy.yaml's Lua
    filter) and the Tus-Resumable header every tus answer carries."""
    return [("x-http-status", code), ("tus-resumable", TUS_VERSION)]


def _tus(cls: type[ServiceError], message: str, reason: Reason, http: str | None = None, **kw) -> ServiceError:
    trailers = _status(http) if http else [("tus-resumable", TUS_VERSION)]
    return cls(message, reason=reason, trailers=trailers + list(kw.pop("trailers", [])), **kw)


def http_date(t: dt.datetime) -> str:
    """RFC 9110 IMF-fixdate, as Upload-Expires wants it."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return email.utils.format_datetime(t.astimezone(dt.UTC), usegmt=True)


def parse_metadata(header: str) -> dict[str, str]:
    """tus Upload-Metadata: comma-separated `key base64value` pairs (value optional).
    Values are decoded as UTF-8; InvalidArgument names what is wrong."""
    out: dict[str, str] = {}
    if len(header) > MAX_METADATA_CHARS:
        raise _bad_header("Upload-Metadata", f"Upload-Metadata is longer than {MAX_METADATA_CHARS} characters")
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, value = pair.partition(" ")
        if not key or " " in value.strip() or key in out:
            raise _bad_header("Upload-Metadata", "Upload-Metadata must be `key base64value` pairs "
                                                 "separated by commas, each key once")
        try:
            out[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8") if value.strip() else ""
        except (binascii.Error, UnicodeDecodeError):
            raise _bad_header("Upload-Metadata", f"the value of {key!r} in Upload-Metadata is not "
                                                 "base64 of UTF-8 text") from None
    return out


@contextlib.contextmanager
def tus_errors():
    """Every refusal of a tus request carries Tus-Resumable, whoever raised it
    (option validation, the disk-space guard, the upload slots)."""
    try:
        yield
    except ServiceError as e:
        if not any(k == "tus-resumable" for k, _ in e.trailers):
            e.trailers = (*e.trailers, ("tus-resumable", TUS_VERSION))
        raise


def _bad_header(name: str, message: str) -> ServiceError:
    return _tus(InvalidArgument, message, Reason.INVALID_UPLOAD_HEADER, violations=[(name, message)])


def upload_request(meta: dict[str, str]) -> media_pb2.UploadVideoRequest:
    """The metadata as UploadVideo's first message, so the same rules check it
    (gateway/validation.py)."""
    req = media_pb2.UploadVideoRequest(filename=meta.get("filename") or meta.get("name") or "",
                                       request_id=meta.get("request_id", ""))
    for key in OPTION_KEYS:
        if meta.get(key, "") == "":
            continue
        kind, parse = ("a number", float) if key in DECIMAL_KEYS else ("an integer", int)
        try:
            setattr(req, key, parse(meta[key]))
        except ValueError:  # not a number, or out of the field's range
            raise _bad_header("Upload-Metadata", f"{key} in Upload-Metadata must be {kind}, "
                                                 f"got {meta[key][:40]!r}") from None
    for key in FLAG_KEYS:
        if meta.get(key, "") == "":
            continue
        value = _FLAG_VALUES.get(meta[key].strip().lower())
        if value is None:
            message = f"{key} in Upload-Metadata must be true or false, got {meta[key][:40]!r}"
            raise _tus(InvalidArgument, message, Reason.INVALID_OPTIONS, violations=[(key, message)])
        setattr(req, key, value)
    return req


class Tus:
    def __init__(self, mongo: Mongo, store: jobs.JobStore, uploads: Uploads, expiry_s: float):
        self.mongo, self.jobs, self.uploads = mongo, store, uploads
        self.coll = mongo.db[COLLECTION]
        self.expiry_s = expiry_s
        self.chunks = mongo.db[f"{VIDEOS_BUCKET}.chunks"]
        self.files = mongo.db[f"{VIDEOS_BUCKET}.files"]

    @property
    def max_bytes(self) -> int:
        return self.uploads.max_bytes

    def ensure_indexes(self) -> None:
        self.coll.create_index([("expire_time", 1)])
        self.coll.create_index([("user_id", 1)])

    # ------------------------------------------------------------ headers

    @staticmethod
    def _headers(context) -> dict[str, str]:
        return {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}

    @staticmethod
    def _check_version(headers: dict[str, str]) -> None:
        """Tus-Resumable, when sent, must be ours (412 otherwise). Plain REST
        GETs and gRPC calls may leave it out."""
        version = headers.get("tus-resumable")
        if version is not None and version.strip() != TUS_VERSION:
            raise _tus(FailedPrecondition, f"this server speaks tus {TUS_VERSION} (Tus-Resumable), "
                       f"not {version[:20]!r}", Reason.TUS_VERSION_UNSUPPORTED, "412",
                       trailers=[("tus-version", TUS_VERSION)])

    @staticmethod
    def _int_header(headers: dict[str, str], name: str) -> int:
        raw = headers.get(name.lower())
        if raw is None or raw.strip() == "":
            raise _bad_header(name, f"the {name} header is required")
        if not raw.strip().isdigit() or len(raw.strip()) > 19:
            raise _bad_header(name, f"{name} must be a non-negative integer, got {raw[:40]!r}")
        return int(raw.strip())

    # ------------------------------------------------------------ OPTIONS

    def describe(self, context) -> httpbody_pb2.HttpBody:
        context.send_initial_metadata([
            ("tus-resumable", TUS_VERSION), ("tus-version", TUS_VERSION),
            ("tus-extension", EXTENSIONS), ("tus-max-size", str(self.max_bytes)),
            ("x-http-status", "204")])
        return httpbody_pb2.HttpBody()

    # ------------------------------------------------------------ POST

    def create(self, context, caller) -> media_pb2.Upload:
        headers = self._headers(context)
        self._check_version(headers)
        if "upload-defer-length" in headers:
            raise _bad_header("Upload-Defer-Length", "Upload-Defer-Length is not supported: "
                                                     "send Upload-Length (the file's size)")
        length = self._int_header(headers, "Upload-Length")
        if length > self.max_bytes:
            raise _tus(ResourceExhausted, f"the upload is larger than the {self.max_bytes}-byte limit",
                       Reason.UPLOAD_TOO_LARGE, "413", metadata={"limit_bytes": str(self.max_bytes)},
                       trailers=[("tus-max-size", str(self.max_bytes))])
        if length == 0:
            raise _tus(InvalidArgument, "the upload is empty: Upload-Length must be at least 1",
                       Reason.UPLOAD_EMPTY, violations=[("Upload-Length", "must be at least 1")])
        meta = parse_metadata(headers.get("upload-metadata", ""))
        first = upload_request(meta)
        options = validation.conversion_options(first)
        filename = validation.filename(first.filename)
        request_id = validation.request_id(first.request_id)
        if self.uploads.space is not None:
            self.uploads.space.check()  # 507 now rather than after the first bytes
        if self.uploads.quotas is not None:
            # The whole length must fit in the storage quota (gateway/quotas.py); the
            # converter enforces the limits per job on what it decodes.
            self.uploads.quotas.start(caller).bytes_in(length)
        job_id = jobs.new_job_id()
        t = jobs.now()
        doc = {"_id": job_id, "user_id": caller.user_id, "video_fid": ObjectId(), "length": length,
               "offset": 0, "tail": b"", "filename": filename,
               "content_type": (meta.get("filetype") or meta.get("type") or "application/octet-stream")[:100],
               "streamable": None, "create_time": t,
               "expire_time": t + dt.timedelta(seconds=self.expiry_s),
               "lock_owner": None, "lock_until": None}
        # The transfer state first: a gateway dying before the job is recorded
        # leaves only it, which expires like any upload.
        self.coll.insert_one(doc)
        try:
            self.jobs.create(job_id=job_id, user_id=caller.user_id, user_email=caller.email,
                             filename=filename, video_fid=doc["video_fid"], video_size=0, options=options,
                             request_id=request_id, trace=tracing.carrier(), uploading=True, tus=True)
        except pymongo.errors.DuplicateKeyError:
            self.coll.delete_one({"_id": job_id})
            return self._existing(context, caller, request_id)
        except BaseException:
            self.coll.delete_one({"_id": job_id})
            raise
        metrics.TUS_UPLOADS.labels("created").inc()
        log.info("upload %s created: %s, %d bytes to come", job_id, filename, length,
                 extra={"job_id": job_id, "step": "tus_created"})
        return self._created(context, _upload_proto(doc, self.jobs.get(job_id)))

    def _created(self, context, upload: media_pb2.Upload) -> media_pb2.Upload:
        md = [("location", f"/v1/uploads/{upload.upload_id}"), ("tus-resumable", TUS_VERSION),
              ("x-http-status", "201")]
        if upload.HasField("expire_time"):
            md.append(("upload-expires", http_date(upload.expire_time.ToDatetime(dt.UTC))))
        context.send_initial_metadata(md)
        return upload

    def _existing(self, context, caller, request_id: str) -> media_pb2.Upload:
        """POST again with a request_id this caller used: the same upload (to
        resume), or its job once complete."""
        job = self.jobs.get_live_by_request(caller.user_id, request_id)
        if job is not None and job.uploading and not job.tus:
            raise _tus(FailedPrecondition, f"an upload with request_id {request_id} is still in progress "
                       "(UploadVideo); retry in a moment", Reason.UPLOAD_IN_PROGRESS, "409",
                       retry_after_s=LOCKED_RETRY_S)
        if job is None:
            raise _tus(FailedPrecondition, f"the upload with request_id {request_id} was just deleted; "
                       "retry", Reason.UPLOAD_IN_PROGRESS, "409", retry_after_s=LOCKED_RETRY_S)
        doc = self.coll.find_one({"_id": job.id, "user_id": caller.user_id})
        log.info("upload %s: creation retried (request %s)", job.id, request_id, extra={"job_id": job.id})
        return self._created(context, _upload_proto(doc, job))

    # ------------------------------------------------------------ HEAD / GET

    def get(self, upload_id: str, context, caller) -> media_pb2.Upload:
        self._check_version(self._headers(context))
        upload = self._find(upload_id, caller.user_id)
        md = [("tus-resumable", TUS_VERSION), ("cache-control", "no-store"),
              ("upload-offset", str(upload.upload_offset)), ("upload-length", str(upload.upload_length))]
        if upload.HasField("expire_time"):
            md.append(("upload-expires", http_date(upload.expire_time.ToDatetime(dt.UTC))))
        context.send_initial_metadata(md)
        return upload

    def _find(self, upload_id: str, user_id: str) -> media_pb2.Upload:
        """The upload as it is: incomplete (its transfer state), or complete (its job)."""
        if not upload_id:
            raise _tus(InvalidArgument, "upload_id is required", Reason.INVALID_JOB_ID,
                       violations=[("upload_id", "upload_id is required")])
        doc = self.coll.find_one({"_id": upload_id, "user_id": user_id})
        if doc is not None:
            self._check_alive(doc)
            done = self._finish_stored(doc)
            if done is not None:  # its gateway died finishing it
                return done
            return _upload_proto(doc, self.jobs.get(upload_id))
        job = self.jobs.get_for_user(upload_id, user_id)
        if job is None:
            raise _not_found(upload_id)
        return _upload_proto(None, job)

    def _check_alive(self, doc: dict) -> None:
        if _aware(doc["expire_time"]) <= jobs.now():
            raise _tus(NotFound, f"upload {doc['_id']} expired at {http_date(doc['expire_time'])} and is "
                       "deleted; upload the file again", Reason.UPLOAD_EXPIRED, "410",
                       metadata={"upload_id": doc["_id"]})

    def _file_complete(self, doc: dict) -> bool:
        return self.files.find_one({"_id": doc["video_fid"]}, {"_id": 1}) is not None

    def _finish_stored(self, doc: dict) -> media_pb2.Upload | None:
        """An upload whose every byte is stored but which was not finished (its
        gateway died in between): finish it now. None if it is not complete."""
        length = int(doc["length"])
        if self._file_complete(doc):
            return self._finish(doc, length)
        if int(doc["offset"]) != length:
            return None
        owner = uuid.uuid4().hex
        doc = self._lock(doc, owner)  # 423 while a PATCH still holds it
        try:
            ChunkedUpload(self.mongo.db, VIDEOS_BUCKET, doc["filename"],
                          metadata={"user_id": doc["user_id"], "content_type": doc.get("content_type")},
                          file_id=doc["video_fid"], offset=length, tail=bytes(doc.get("tail") or b""),
                          track=False).close()
        except BaseException:
            self._unlock(doc["_id"], owner)
            raise
        return self._finish(doc, length)

    # ------------------------------------------------------------ PATCH

    def append(self, requests, context, caller) -> httpbody_pb2.HttpBody:
        first = next(requests, None)
        if first is None:
            raise _tus(InvalidArgument, "no request", Reason.UPLOAD_EMPTY)
        headers = self._headers(context)
        self._check_version(headers)
        if first.body.content_type.split(";")[0].strip().lower() != OFFSET_STREAM:
            raise _tus(InvalidArgument, f"a PATCH body must be Content-Type: {OFFSET_STREAM}",
                       Reason.UNSUPPORTED_CONTENT_TYPE, "415")
        offset = self._int_header(headers, "Upload-Offset")
        if not self.uploads._slots.acquire(blocking=False):
            raise _tus(ResourceExhausted, "too many uploads in progress; retry in a few seconds",
                       Reason.TOO_MANY_UPLOADS, retry_after_s=3.0)
        try:
            return self._append(first, requests, context, caller, offset)
        finally:
            self.uploads._slots.release()

    def _append(self, first, requests, context, caller, offset: int) -> httpbody_pb2.HttpBody:
        upload_id = first.upload_id
        doc = self.coll.find_one({"_id": upload_id, "user_id": caller.user_id})
        if doc is None:
            job = self.jobs.get_for_user(upload_id, caller.user_id) if upload_id else None
            if job is None:
                raise _not_found(upload_id)
            # Complete already (a retry of the last PATCH whose answer was lost).
            return self._appended(context, self._check_offset(offset, job.video_size, upload_id))
        self._check_alive(doc)
        if self._finish_stored(doc) is not None:
            return self._appended(context, self._check_offset(offset, int(doc["length"]), upload_id))
        self._check_offset(offset, int(doc["offset"]), upload_id)
        owner = uuid.uuid4().hex
        doc = self._lock(doc, owner)
        job = self.jobs.get(upload_id)
        if job is None or job.deleted:
            self._unlock(upload_id, owner)
            raise _not_found(upload_id)
        return Patch(self, doc, job, owner, caller).run(first, requests, context)

    @staticmethod
    def _check_offset(sent: int, at: int, upload_id: str) -> int:
        if sent != at:
            raise _tus(FailedPrecondition, f"Upload-Offset {sent} is not the upload's offset {at}: "
                       "ask HEAD where to go on", Reason.UPLOAD_OFFSET_MISMATCH, "409",
                       metadata={"upload_id": upload_id, "upload_offset": str(at)},
                       trailers=[("upload-offset", str(at))])
        return at

    @staticmethod
    def _appended(context, offset: int) -> httpbody_pb2.HttpBody:
        context.send_initial_metadata([("tus-resumable", TUS_VERSION), ("upload-offset", str(offset)),
                                       ("x-http-status", "204")])
        return httpbody_pb2.HttpBody()

    def _lock(self, doc: dict, owner: str) -> dict:
        t = jobs.now()
        locked = self.coll.find_one_and_update(
            {"_id": doc["_id"], "offset": doc["offset"],
             "$or": [{"lock_until": None}, {"lock_until": {"$lt": t}}]},
            {"$set": {"lock_owner": owner, "lock_until": t + dt.timedelta(seconds=LOCK_S)}},
            return_document=pymongo.ReturnDocument.AFTER)
        if locked is None:
            raise _tus(FailedPrecondition, f"upload {doc['_id']} is receiving another PATCH; "
                       "retry once it ended", Reason.UPLOAD_LOCKED, "423", retry_after_s=LOCKED_RETRY_S,
                       metadata={"upload_id": doc["_id"]})
        return locked

    def _unlock(self, upload_id: str, owner: str) -> None:
        self.coll.update_one({"_id": upload_id, "lock_owner": owner},
                             {"$set": {"lock_owner": None, "lock_until": None}})

    # ------------------------------------------------------------ completion

    def _finish(self, doc: dict, size: int) -> media_pb2.Upload:
        """The file is complete (its files document exists): make the job
        visible and publish it, then drop the transfer state. Idempotent: a
        gateway that dies halfway leaves it to the next HEAD or PATCH."""
        upload_id = doc["_id"]
        declared = self._check_declared(doc, size)
        job = self.jobs.finish_upload(upload_id, size, doc["filename"], declared)
        if job is None:
            job = self.jobs.get(upload_id)
            if job is None or job.deleted:  # terminated or its account deleted meanwhile
                raise _not_found(upload_id)
        else:
            if not job.published:
                self.uploads.publish(job)
            metrics.UPLOAD_BYTES.inc(size)
            metrics.UPLOADS.labels("while_uploading" if doc.get("streamable") else "after_upload").inc()
            metrics.TUS_UPLOADS.labels("completed").inc()
            log.info("upload %s complete: job recorded: %s (%d bytes)", upload_id, doc["filename"], size,
                     extra={"job_id": upload_id, "step": "recorded", "bytes": size})
        self.coll.delete_one({"_id": upload_id})
        return _upload_proto(None, job)

    def _check_declared(self, doc: dict, size: int) -> float | None:
        """The complete file may declare its length (formats/durations.py): over
        a limit per job (413) or the minutes left (429), the upload is deleted
        with everything written and its last PATCH refused (gateway/quotas.py).
        Returns the seconds declared, if any."""
        quotas = self.uploads.quotas
        job = self.jobs.get(doc["_id"]) if quotas is not None else None
        if quotas is None or job is None:
            return None
        with ChunkedDownload(self.mongo.db, VIDEOS_BUCKET, doc["video_fid"]) as f:
            seconds = durations.of_file(cast(BinaryIO, f), size)
        try:
            quotas.check(Caller(job.user_id, job.user_email)).declared(seconds, job.options)
        except ServiceError:
            self._delete(doc)
            raise
        return seconds

    # ------------------------------------------------------------ DELETE

    def delete(self, upload_id: str, context, caller) -> httpbody_pb2.HttpBody:
        self._check_version(self._headers(context))
        doc = self.coll.find_one({"_id": upload_id, "user_id": caller.user_id}) if upload_id else None
        if doc is not None:
            self._delete(doc)
            metrics.TUS_UPLOADS.labels("terminated").inc()
            log.info("upload %s terminated by its owner", upload_id, extra={"job_id": upload_id})
        else:
            # A complete upload is its job: terminating it deletes the job, like DeleteJob.
            job = self.jobs.mark_deleted(upload_id, caller.user_id) if upload_id else None
            if job is None:
                raise _not_found(upload_id)
            retention.delete_job(self.mongo, self.jobs, job)
            metrics.JOBS_DELETED.labels("owner").inc()
        context.send_initial_metadata([("tus-resumable", TUS_VERSION), ("x-http-status", "204")])
        return httpbody_pb2.HttpBody()

    def _delete(self, doc: dict) -> None:
        """An incomplete upload, with everything written: the job (hidden) first,
        as DeleteJob does, then its chunks, then the transfer state (so a
        gateway dying halfway leaves something that names what is left). A
        PATCH running meanwhile loses its lock and deletes what it still writes."""
        job = self.jobs.mark_deleted(doc["_id"])
        if job is not None:
            retention.delete_job(self.mongo, self.jobs, job)
        # Past the recorded offset: what a killed PATCH may have stored.
        delete_chunks(self.mongo.db, VIDEOS_BUCKET, doc["video_fid"],
                      at_least=int(doc["offset"]) // DEFAULT_CHUNK_SIZE + 4 * RANGE_CHUNKS)
        self.coll.delete_one({"_id": doc["_id"]})

    def sweep_expired(self, limit: int = 100) -> int:
        """Delete incomplete uploads past their expire_time (every gateway may run it)."""
        t = jobs.now()
        n = 0
        for doc in list(self.coll.find({"expire_time": {"$lte": t}}).limit(limit)):
            if doc.get("lock_until") is not None and _aware(doc["lock_until"]) > t:
                continue  # a PATCH is running right now; next sweep
            job = self.jobs.get(doc["_id"])
            if job is not None and not job.uploading and not job.deleted:
                # Complete: its gateway died before dropping the transfer state.
                self.coll.delete_one({"_id": doc["_id"]})
                continue
            self._delete(doc)
            metrics.TUS_UPLOADS.labels("expired").inc()
            log.info("upload %s expired: deleted with %d bytes written", doc["_id"], doc["offset"],
                     extra={"job_id": doc["_id"]})
            n += 1
        return n


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _not_found(upload_id: str) -> ServiceError:
    return _tus(NotFound, f"upload {upload_id} not found (never yours, terminated or expired)",
                Reason.UPLOAD_NOT_FOUND, metadata={"upload_id": upload_id})


def _upload_proto(doc: dict | None, job: jobs.Job | None) -> media_pb2.Upload:
    """The Upload resource: from the transfer state while incomplete, from the job after."""
    up = media_pb2.Upload()
    if job is not None:
        up.upload_id = job.id
        up.filename = job.filename
        up.options.CopyFrom(job.options)
        ts = jobs._ts(job.create_time)
        if ts is not None:
            up.create_time.CopyFrom(ts)
    if doc is None:
        assert job is not None
        up.upload_offset = up.upload_length = job.video_size
        up.complete = True
        return up
    up.upload_id = doc["_id"]
    up.filename = doc["filename"]
    up.upload_offset = int(doc["offset"])
    up.upload_length = int(doc["length"])
    for field in ("create_time", "expire_time"):
        ts = jobs._ts(doc.get(field))
        if ts is not None:
            getattr(up, field).CopyFrom(ts)
    return up


class LostLock(Exception):
    """Another PATCH took the upload over, or it was terminated or expired."""


class Patch:
    """One PATCH request: appends the bytes that arrive to the upload, from its
    recorded offset and tail, and records where it got to."""

    def __init__(self, tus: Tus, doc: dict, job: jobs.Job, owner: str, caller):
        self.tus, self.doc, self.job, self.owner, self.caller = tus, doc, job, owner, caller
        self.id: str = doc["_id"]
        self.length = int(doc["length"])
        self.streamable: bool | None = doc.get("streamable")
        self._checkpointed = time.monotonic()
        self._recorded = int(doc["offset"])  # the offset the document says
        self._head = bytearray()
        self._beating = False
        guard = tus.uploads.space.guard() if tus.uploads.space else None

        def before_store(n: int) -> None:
            if guard is not None:
                guard(n)

        self.stream = ChunkedUpload(
            tus.mongo.db, VIDEOS_BUCKET, doc["filename"],
            metadata={"user_id": caller.user_id, "content_type": doc.get("content_type") or
                      "application/octet-stream"},
            file_id=doc["video_fid"], offset=int(doc["offset"]), tail=bytes(doc.get("tail") or b""),
            track=False, before_store=before_store, chunk_db=tus.mongo.chunk_db)

    def run(self, first, requests, context) -> httpbody_pb2.HttpBody:
        outcome = "failed"
        try:
            # A killed PATCH may have stored chunks past the recorded offset: they go.
            self.tus.chunks.delete_many({"files_id": self.doc["video_fid"],
                                         "n": {"$gte": self.stream.stored // self.stream.chunk_size}})
            self._start_sniffing()
            self.stream.write_behind()
            self._receive(first, requests)
            cut = _reset_after_end(context)
            if self.stream.length == self.length:
                # Every byte is in, whether or not the client stayed for the answer.
                self.stream.close()
                self.tus._finish(self.doc, self.length)
                outcome = "completed"
            else:
                self._persist()
                outcome = "cut" if cut else "partial"
            return self.tus._appended(context, self.stream.length)
        except LostLock:
            outcome = "lost_lock"
            self._lost()
            raise _tus(FailedPrecondition, f"upload {self.id} was taken over by another PATCH, or terminated",
                       Reason.UPLOAD_LOCKED, "423", retry_after_s=LOCKED_RETRY_S) from None
        except BaseException:
            # Refused (too large, disk full) or the store failed: keep what is
            # stored, so the client can go on from there.
            self._persist_quietly()
            raise
        finally:
            self._stop_beating()
            metrics.TUS_PATCHES.labels(outcome).inc()

    def _receive(self, first, requests) -> None:
        for m in _chain(first, requests):
            data = m.body.data
            if not data:
                continue
            if self.stream.length + len(data) > self.length:
                raise _tus(ResourceExhausted, f"the PATCH goes past Upload-Length ({self.length} bytes)",
                           Reason.UPLOAD_TOO_LARGE, "413", metadata={"upload_length": str(self.length)})
            self.stream.write(data)
            if self.streamable is None:
                self._sniff(data)
            if time.monotonic() - self._checkpointed >= CHECKPOINT_S:
                self._checkpoint()

    # -- convert while uploading

    def _start_sniffing(self) -> None:
        if self.streamable is not None:
            if self.streamable:
                self._publish_early()
            return
        stored = self.stream.stored
        if stored:  # the first chunk holds the head
            chunk = self.tus.chunks.find_one({"files_id": self.doc["video_fid"], "n": 0})
            self._head += (chunk or {}).get("data", b"")[:container_sniff.SNIFF_BYTES]
        else:
            self._head += self.stream.tail[:container_sniff.SNIFF_BYTES]
        self._decide()

    def _sniff(self, data: bytes) -> None:
        self._head += data[:container_sniff.SNIFF_BYTES - len(self._head)]
        self._decide()

    def _decide(self) -> None:
        verdict = container_sniff.verdict(bytes(self._head))
        if verdict is container_sniff.Verdict.NEED_MORE and len(self._head) < container_sniff.SNIFF_BYTES \
                and self.stream.length < self.length:
            return
        self.streamable = verdict is container_sniff.Verdict.STREAMABLE
        self._head = bytearray()
        self.tus.coll.update_one({"_id": self.id}, {"$set": {"streamable": self.streamable}})
        if self.streamable:
            log.info("upload %s is streamable: converting while it arrives", self.id,
                     extra={"job_id": self.id, "step": "streaming"})
            self._publish_early()

    def _publish_early(self) -> None:
        """Keep the hidden job alive (heartbeat) and, unless a converter has it
        already, publish it: the converter reads the chunks as they come."""
        self.tus.uploads.heartbeat.add(self.id)
        self._beating = True
        self.tus.jobs.touch_uploads([self.id])
        job = self.tus.jobs.get(self.id)
        if job is not None and not job.published:
            self.tus.uploads.publish(job)

    def _stop_beating(self) -> None:
        if self._beating:
            self.tus.uploads.heartbeat.discard(self.id)

    # -- recording progress

    def _checkpoint(self) -> None:
        """Record the bytes of the chunks stored so far (not the tail, which is
        only in memory) and renew the lock."""
        self._checkpointed = time.monotonic()
        t = jobs.now()
        fields: dict = {"lock_until": t + dt.timedelta(seconds=LOCK_S)}
        durable = self.stream.durable
        if durable > self._recorded:  # never back: the recorded tail may still be ahead
            fields.update(offset=durable, tail=b"")
        r = self.tus.coll.update_one({"_id": self.id, "lock_owner": self.owner}, {"$set": fields})
        if r.matched_count != 1:
            raise LostLock()
        self._recorded = max(self._recorded, durable)

    def _persist(self) -> None:
        """The request ended short of the last byte: store every full chunk,
        record the exact offset and the tail, release the lock."""
        self.stream.pause()
        r = self.tus.coll.update_one(
            {"_id": self.id, "lock_owner": self.owner},
            {"$set": {"offset": self.stream.length, "tail": self.stream.tail,
                      "lock_owner": None, "lock_until": None}})
        if r.matched_count != 1:
            raise LostLock()
        log.info("upload %s: %d of %d bytes stored", self.id, self.stream.length, self.length,
                 extra={"job_id": self.id, "step": "tus_paused"})

    def _persist_quietly(self) -> None:
        try:
            self._persist()
        except LostLock:
            self._lost()
        except Exception as e:  # noqa: BLE001 - the store is down: the last checkpoint stands
            log.warning("upload %s: could not record where it stopped (%s); the last checkpoint stands",
                        self.id, e)
            self.stream.abandon()

    def _lost(self) -> None:
        """Someone else owns the upload now; if it is gone altogether
        (terminated, expired: no transfer state, no live job), what this PATCH
        stored goes too. Completed by another PATCH, it is left alone."""
        self.stream.abandon()
        job = self.tus.jobs.get(self.id)
        if self.tus.coll.find_one({"_id": self.id}, {"_id": 1}) is None and (job is None or job.deleted):
            self.tus.files.delete_one({"_id": self.doc["video_fid"]})
            delete_chunks(self.tus.mongo.db, VIDEOS_BUCKET, self.doc["video_fid"],
                          at_least=self.stream.stored // self.stream.chunk_size + 4 * RANGE_CHUNKS)


def _chain(first, rest):
    yield first
    yield from rest

