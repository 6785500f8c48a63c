"""Reading and deleting GridFS files a few chunks at a time.

pymongo's GridOut reads a file with one cursor over all its chunks sorted by
`n`, and GridFSBucket.delete removes them with one delete_many. A server may
build the whole result of such a query before answering: the embedded
SecantusDB did (RSS +1 GB per 500 MB file read, measured), which with two
1.5 GB conversions at once is what ran it out of memory. Here every query
names a bounded range of `n` (RANGE_CHUNKS chunks, 4 MB), so neither side ever
holds more than that, on any MongoDB. The layout is plain GridFS.

    with ChunkedDownload(db, "videos", file_id) as src:   # read/seek/tell
        data = src.read(1 << 20)
    delete_file(db, "videos", file_id)                    # files doc, then chunks
"""
from __future__ import annotations

import io

import gridfs.errors

RANGE_CHUNKS = 16  # 16 x 255 KiB = 4 MB per query


class ChunkedDownload(io.RawIOBase):
    """A seekable, read-only view of one GridFS file (what PyAV needs)."""

    def __init__(self, db, bucket: str, file_id, range_chunks: int = RANGE_CHUNKS):
        doc = db[f"{bucket}.files"].find_one({"_id": file_id})
        if doc is None:
            raise gridfs.errors.NoFile(f"no file in bucket {bucket!r} with _id {file_id!r}")
        self._chunks = db[f"{bucket}.chunks"]
        self._id = file_id
        self.length = int(doc["length"])
        self.chunk_size = int(doc["chunkSize"])
        self._range = range_chunks
        self._pos = 0
        self._cache: dict[int, bytes] = {}  # the chunks of the last range fetched

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _chunk(self, n: int) -> bytes:
        if n not in self._cache:
            self._cache = {d["n"]: bytes(d["data"]) for d in self._chunks.find(
                {"files_id": self._id, "n": {"$gte": n, "$lt": n + self._range}})}
            if n not in self._cache:
                raise gridfs.errors.CorruptGridFile(f"chunk {n} of file {self._id} is missing")
        return self._cache[n]

    def read(self, size: int = -1) -> bytes:
        end = self.length if size is None or size < 0 else min(self.length, self._pos + size)
        out = bytearray()
        while self._pos < end:
            n, within = divmod(self._pos, self.chunk_size)
            piece = self._chunk(n)[within:within + (end - self._pos)]
            if not piece:
                raise gridfs.errors.CorruptGridFile(f"chunk {n} of file {self._id} is too short")
            out += piece
            self._pos += len(piece)
        return bytes(out)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._cache = {}
        super().close()


def delete_chunks(db, bucket: str, file_id, upto: int | None = None,
                  range_chunks: int = 4 * RANGE_CHUNKS, at_least: int = 0) -> int:
    """Delete the chunks of `file_id`, a range of `n` at a time; `upto`: how many
    there are at most (unknown for an abandoned upload: then until none is left,
    but not before `at_least`: chunks below it may be gone already, e.g. an
    in-progress file deleted while its writer went on). Returns how many went."""
    chunks = db[f"{bucket}.chunks"]
    deleted, n = 0, 0
    while True:
        if upto is not None and n >= upto:
            # Anything past the expected count (should not happen) goes in one go.
            return deleted + chunks.delete_many({"files_id": file_id, "n": {"$gte": n}}).deleted_count
        gone = chunks.delete_many({"files_id": file_id,
                                   "n": {"$gte": n, "$lt": n + range_chunks}}).deleted_count
        deleted += gone
        n += range_chunks
        # Chunks are written in order, so the first empty range is the end (no
        # open-ended query: that may scan the whole collection).
        if upto is None and gone == 0 and n >= at_least:
            return deleted


def delete_file(db, bucket: str, file_id) -> bool:
    """Delete a GridFS file: its files document first (so it stops existing at
    once), then its chunks in ranges. False if there was no files document
    (its chunks, if any, are deleted anyway). A complete file's leftover
    in-progress record goes too; a file still being written keeps its record
    (common/gridfs_upload.py): its writer may store more chunks before it
    notices, and then abort() them, or die and leave them to the janitor."""
    doc = db[f"{bucket}.files"].find_one_and_delete({"_id": file_id})
    upto = None
    if doc is not None and doc.get("chunkSize"):
        upto = -(-int(doc["length"]) // int(doc["chunkSize"]))
    delete_chunks(db, bucket, file_id, upto)
    if doc is not None:
        db[f"{bucket}.uploads"].delete_one({"_id": file_id})
    return doc is not None
