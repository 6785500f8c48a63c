"""A GridFS upload that stores each chunk as soon as it is full.

pymongo's own upload stream (GridIn, pymongo >= 4.9) batches chunks in memory
and sends nothing until it holds 48 MB or is closed: up to 48 MB per upload in
the gateway, times MAX_CONCURRENT_UPLOADS. This writer keeps at most one chunk
(255 KiB) plus the message being written, so the gateway's and the
converter's memory stays flat whatever the file size. The layout is plain GridFS (the spec's `files` and
`chunks` documents), so GridFSBucket reads the result unchanged.

    up = ChunkedUpload(db, "videos", "clip.mp4", metadata={...})
    up.write(data) ...      # chunks go to <bucket>.chunks as they fill
    up.close()              # last chunk, then the files document: the file exists
    up.abort()              # or: delete every chunk written so far

Until close() writes the files document, the chunks belong to no file. So
that they can be found without scanning every chunk (which a server may do by
building the whole result), an upload in progress is recorded in
`<bucket>.uploads` ({_id: file id, n: chunks so far, touched}), refreshed at
most every TOUCH_EVERY_S as chunks are stored and removed by close() and abort(); the gateway's janitor
deletes the chunks of a record left untouched too long (its gateway died).
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

from bson import ObjectId
from bson.binary import Binary
from gridfs import DEFAULT_CHUNK_SIZE

from common.gridfs_download import delete_chunks

TOUCH_EVERY_S = 1.0  # between refreshes of the in-progress record (one small write)

_indexed: set[tuple[str, str]] = set()
_index_lock = threading.Lock()


def ensure_indexes(db, bucket: str) -> None:
    """The indexes GridFS drivers create (chunks by file and number, unique), once per process."""
    key = (db.name, bucket)
    if key in _indexed:
        return
    with _index_lock:
        if key in _indexed:
            return
        db[f"{bucket}.chunks"].create_index([("files_id", 1), ("n", 1)], unique=True)
        db[f"{bucket}.files"].create_index([("filename", 1), ("uploadDate", 1)])
        _indexed.add(key)


class ChunkedUpload:
    def __init__(self, db, bucket: str, filename: str, metadata: dict | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, file_id: ObjectId | None = None,
                 before_store: Callable[[int], None] | None = None):
        # before_store(n): called before each chunk is stored; may raise to stop
        # the upload (common/storage_space.py's disk-space guard).
        ensure_indexes(db, bucket)
        self._id = file_id or ObjectId()
        self.filename = filename
        self.metadata = metadata or {}
        self.chunk_size = chunk_size
        self.length = 0
        self.closed = False
        self._db, self._bucket = db, bucket
        self._files = db[f"{bucket}.files"]
        self._chunks = db[f"{bucket}.chunks"]
        self._buf = bytearray()
        self._n = 0
        self._before_store = before_store
        self._uploads = db[f"{bucket}.uploads"]
        self._touched = float("-inf")

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ValueError("cannot write to a closed upload")
        self._buf += data
        self.length += len(data)
        while len(self._buf) >= self.chunk_size:
            self._store(bytes(self._buf[: self.chunk_size]))
            del self._buf[: self.chunk_size]

    def close(self) -> None:
        """Store the last partial chunk and the files document."""
        if self.closed:
            return
        if self._buf:
            self._store(bytes(self._buf))
            self._buf.clear()
        self._files.insert_one({
            "_id": self._id,
            "length": self.length,
            "chunkSize": self.chunk_size,
            "uploadDate": dt.datetime.now(dt.UTC),
            "filename": self.filename,
            "metadata": self.metadata,
        })
        self.closed = True
        self._uploads.delete_one({"_id": self._id})

    def abort(self) -> None:
        """Delete what was written; the upload never becomes a file."""
        self._buf.clear()
        self.closed = True
        delete_chunks(self._db, self._bucket, self._id, upto=self._n)  # in ranges: see gridfs_download
        self._uploads.delete_one({"_id": self._id})

    def _store(self, data: bytes) -> None:
        if self._before_store is not None:
            self._before_store(len(data))
        if time.monotonic() - self._touched >= TOUCH_EVERY_S:
            self._touched = time.monotonic()
            self._uploads.update_one({"_id": self._id}, {"$set": {
                "n": self._n, "touched": dt.datetime.now(dt.UTC)}}, upsert=True)
        self._chunks.insert_one({"files_id": self._id, "n": self._n, "data": Binary(data)})
        self._n += 1
