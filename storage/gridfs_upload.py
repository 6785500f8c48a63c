"""A GridFS upload that stores each chunk as soon as it is full.

pymongo's own upload stream (GridIn, pymongo >= 4.9) batches chunks in memory
and sends nothing until it holds 48 MB or is closed: up to 48 MB per upload in
the gateway, times MAX_CONCURRENT_UPLOADS. This writer keeps at most one chunk
(255 KiB) plus the message being written (a few MB with write_behind()), so
the gateway's and the converter's memory stays flat whatever the file size.
The layout is plain GridFS (the spec's `files` and `chunks` documents), so
GridFSBucket reads the result unchanged.

    up = ChunkedUpload(db, "videos", "clip.mp4", metadata={...})
    up.write(data) ...      # chunks go to <bucket>.chunks as they fill
    up.close()              # last chunk, then the files document: the file exists
    up.abort()              # or: delete every chunk written so far

The gateway's uploads call write_behind() first: then full chunks go to a
writer thread, which whenever it is free takes every chunk waiting (up to
WRITE_BEHIND_BYTES, one insert_many): group commit. Receiving the next bytes
overlaps storing the last ones, a busy store sees a few big inserts instead
of one per chunk (what makes GridFSBucket.upload_from_stream fast;
docs/architecture.md, "Uploads"), and a chunk cut while the store keeps up
is stored at once, even if the client then pauses (a file converted while it
arrives must not lag behind what was sent). Memory stays bounded: at most
WRITE_BEHIND_DEPTH batches wait (write() blocks beyond) plus the one being
stored. A failed store is raised by the next write() or close().

Until close() writes the files document, the chunks belong to no file. So
that they can be found without scanning every chunk (which a server may do by
building the whole result), an upload in progress is recorded in
`<bucket>.uploads` ({_id: file id, n: chunks so far, touched}), refreshed at
most every TOUCH_EVERY_S as chunks are stored and removed by close() and abort(); the gateway's janitor
deletes the chunks of a record left untouched too long (its gateway died).

A resumable upload (gateway/tus.py) is written by several requests, each with
its own ChunkedUpload: `offset` and `tail` go on from where the last one
stopped, `pause()` stores every full chunk and leaves the rest (`tail`) to
the caller, `durable` says how much is stored without waiting, and
`track=False` leaves the janitor out (such an upload may pause for hours; it
has an expiry of its own).

Chunks may be inserted through a client without retryable writes
(`chunk_db`, storage/mongo.py's Mongo.chunk_db), which spares the server its
bookkeeping of every write; a connection lost mid-insert is then retried
here, once, as a retryable write would be: chunks the first try stored are
recognised by their unique (files_id, n) and left as they are.
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

import pymongo.errors
from bson import ObjectId
from gridfs import DEFAULT_CHUNK_SIZE

from video2mp3.core.background import WriteBehind
from video2mp3.storage.gridfs_download import delete_chunks

# Chunks are the drivers' 255 KiB (DEFAULT_CHUNK_SIZE). 1 MiB ones cost
# SecantusDB about 40 % less CPU per GB, but made each conversion after its
# upload 1.4-1.8x slower and the phone layout's skipping fetch 4x more
# (docs/benchmarks.md, bench-e2e).
TOUCH_EVERY_S = 1.0  # between refreshes of the in-progress record (one small write)
# write_behind(): bytes per insert_many at most, and batches waiting for the
# writer. Measured on SecantusDB: 16 chunks per insert store ~1.6x faster than
# one; 8 (2 MB) uploaded as fast as 16 through the gateway, in less memory.
WRITE_BEHIND_BYTES = 2 * 1024 * 1024
WRITE_BEHIND_DEPTH = 1

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
                 before_store: Callable[[int], None] | None = None,
                 offset: int = 0, tail: bytes = b"", track: bool = True, chunk_db=None):
        # before_store(n): called as each chunk is cut, in the caller's thread,
        # before it is stored; may raise to stop the upload (gateway/storage_space.py's
        # disk-space guard).
        # offset, tail: go on with an upload whose first `offset` bytes are stored
        # already: offset // chunk_size full chunks, and `tail`, the bytes after
        # them, kept by the caller (a resumable upload: gateway/tus.py).
        # track: record the upload in `<bucket>.uploads` for the janitor; a caller
        # that tracks its upload itself (and may pause for hours) passes False.
        # chunk_db: the same database through a client without retryable
        # writes, for the chunks (module docstring); default `db`.
        ensure_indexes(db, bucket)
        if len(tail) != offset % chunk_size:
            raise ValueError(f"a tail of {len(tail)} bytes does not end at offset {offset}")
        self._id = file_id or ObjectId()
        self.filename = filename
        self.metadata = metadata or {}
        self.chunk_size = chunk_size
        self.length = offset
        self.closed = False
        self._db, self._bucket = db, bucket
        self._files = db[f"{bucket}.files"]
        self._chunks = (db if chunk_db is None else chunk_db)[f"{bucket}.chunks"]
        self._buf = bytearray(tail)  # the partial chunk
        self._n = offset // chunk_size  # chunks cut so far (stored, or on their way)
        self._stored_n = self._n  # chunks known to be stored
        self._before_store = before_store
        self._uploads = db[f"{bucket}.uploads"] if track else None
        self._touched = float("-inf")
        self._writer: WriteBehind[dict] | None = None

    def write_behind(self, batch_bytes: int = WRITE_BEHIND_BYTES, depth: int = WRITE_BEHIND_DEPTH) -> None:
        """From now on, store chunks `batch_bytes` at a time on a writer thread (module docstring)."""
        if self._writer is None:
            batch = max(1, batch_bytes // self.chunk_size)
            self._writer = WriteBehind(self._insert, batch=batch, limit=batch * depth, name=f"gridfs-{self._bucket}")

    def write(self, data) -> None:
        if self.closed:
            raise ValueError("cannot write to a closed upload")
        self.length += len(data)
        view = memoryview(data)
        if self._buf:  # complete the partial chunk first
            take = self.chunk_size - len(self._buf)
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) < self.chunk_size:
                return
            self._cut(bytes(self._buf))
            self._buf.clear()
        # Whole chunks straight from the caller's bytes: one copy each.
        while len(view) >= self.chunk_size:
            self._cut(view[:self.chunk_size].tobytes())
            view = view[self.chunk_size:]
        self._buf += view

    @property
    def stored(self) -> int:
        """Bytes in full chunks cut so far (stored once flush() returns)."""
        return self._n * self.chunk_size

    @property
    def durable(self) -> int:
        """Bytes in full chunks known to be stored (no waiting; <= stored)."""
        return self._stored_n * self.chunk_size

    @property
    def tail(self) -> bytes:
        """The bytes after the full chunks: the partial chunk not stored yet."""
        return bytes(self._buf)

    def flush(self) -> None:
        """Wait until every full chunk cut so far is stored (raises the writer's
        failure); the partial chunk stays in memory (`tail`)."""
        if self._writer is not None:
            self._writer.flush()

    def pause(self) -> None:
        """Store every full chunk and stop the writer thread, leaving the upload
        open, to be resumed later (by anyone) from `length` and `tail`."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def abandon(self) -> None:
        """Store nothing more and delete nothing: another writer owns the file now."""
        self._buf.clear()
        self.closed = True
        if self._writer is not None:
            self._writer.abort()

    def close(self) -> None:
        """Store the last partial chunk and the files document."""
        if self.closed:
            return
        if self._buf:
            self._cut(bytes(self._buf))
            self._buf.clear()
        if self._writer is not None:
            self._writer.close()  # raises what the writer met
        self._files.insert_one({
            "_id": self._id,
            "length": self.length,
            "chunkSize": self.chunk_size,
            "uploadDate": dt.datetime.now(dt.UTC),
            "filename": self.filename,
            "metadata": self.metadata,
        })
        self.closed = True
        if self._uploads is not None:
            self._uploads.delete_one({"_id": self._id})

    def abort(self) -> None:
        """Delete what was written; the upload never becomes a file."""
        self._buf.clear()
        self.closed = True
        if self._writer is not None:
            self._writer.abort()  # nothing more is stored once this returns
        delete_chunks(self._db, self._bucket, self._id, upto=self._n)  # in ranges: see gridfs_download
        if self._uploads is not None:
            self._uploads.delete_one({"_id": self._id})

    def _cut(self, data: bytes) -> None:
        """One full (or the last) chunk: stored now, or batched for the writer."""
        if self._before_store is not None:
            self._before_store(len(data))
        # bytes are BSON binary subtype 0, what GridFS stores (no Binary() copy).
        doc = {"files_id": self._id, "n": self._n, "data": data}
        self._n += 1
        if self._writer is None:
            self._insert([doc])
        else:
            self._writer.write(doc)  # blocks while too many wait; raises the writer's error

    def _insert(self, docs: list[dict]) -> None:
        if self._uploads is not None and time.monotonic() - self._touched >= TOUCH_EVERY_S:
            self._touched = time.monotonic()
            self._uploads.update_one({"_id": self._id}, {"$set": {
                "n": docs[0]["n"], "touched": dt.datetime.now(dt.UTC)}}, upsert=True)
        try:
            if len(docs) == 1:
                self._chunks.insert_one(docs[0])
            else:
                self._chunks.insert_many(docs)  # ordered: a failure stores no later chunk
        except pymongo.errors.ConnectionFailure:
            _insert_again(self._chunks, docs)
        self._stored_n = docs[-1]["n"] + 1


DUPLICATE_KEY = 11000


def _insert_again(chunks, docs: list[dict]) -> None:
    """The one retry of an insert whose fate is unknown (the connection was
    lost): every chunk the first try did not store; a duplicate key is one it
    did (the documents kept their _id, and (files_id, n) is unique)."""
    try:
        chunks.insert_many(docs, ordered=False)
    except pymongo.errors.BulkWriteError as e:
        if any(err.get("code") != DUPLICATE_KEY for err in e.details.get("writeErrors", [])):
            raise
