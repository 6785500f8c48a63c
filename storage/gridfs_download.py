"""Reading and deleting GridFS files a few chunks at a time.

pymongo's GridOut reads a file with one cursor over all its chunks sorted by
`n`, and GridFSBucket.delete removes them with one delete_many. A server may
build the whole result of such a query before answering: the embedded
SecantusDB did (RSS +1 GB per 500 MB file read, measured), which with two
1.5 GB conversions at once is what ran it out of memory. Here every query
names a bounded set of `n` (RANGE_CHUNKS chunks, 4 MB), so neither side ever
holds more than that, on any MongoDB. The layout is plain GridFS.

    with ChunkedDownload(db, "videos", file_id) as src:   # read/seek/tell
        data = src.read(1 << 20)
    delete_file(db, "videos", file_id)                    # files doc, then chunks

A download can also skip bytes the reader will never look at (chunks wholly
inside `skip` ranges read as zeros and are never fetched) and fetch the next
ranges in a helper thread while the reader works (`read_ahead`).
"""
from __future__ import annotations

import bisect
import io
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import gridfs.errors

RANGE_CHUNKS = 16  # 16 x 255 KiB = 4 MB per query
READ_AHEAD = 2     # ranges a reading helper thread keeps ready ahead of the reader
CLOSE_WAIT_S = 2.0  # close() waits this long at most for a query in flight

Range = tuple[int, int]  # [start, end) in bytes


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, disjoint, non-adjacent ranges covering the same bytes."""
    out: list[Range] = []
    for s, e in sorted(r for r in ranges if r[1] > r[0]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


class ChunkReader(io.RawIOBase):
    """What both GridFS readers share: a read-only file whose read(size) the
    subclass implements; readinto() for PyAV's buffered reads."""

    _pos = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class ChunkedDownload(ChunkReader):
    """A seekable, read-only view of one GridFS file (what PyAV needs).

    skip: byte ranges the reader does not need. A GridFS chunk is fetched
        only if some byte of it is outside them; the bytes of the other
        chunks read as zeros. Which bytes are safe to skip is the caller's
        knowledge, e.g. another track's samples for a demuxer that never
        looks inside them (converter/mp4_index.py says why that holds).
    read_ahead: once the reader goes from one range of chunks to the next,
        a helper thread fetches up to this many ranges past the reader's
        (pymongo waits on the socket without the GIL), so round trips to
        MongoDB overlap the reader's work. It follows the reader: after a
        seek elsewhere it drops what it held (but the range the reader left:
        a demuxer that jumps to an index comes back) and starts again once
        reading is sequential; a range it does not have is fetched on demand.
        Memory: at most read_ahead + 2 ranges, whatever the file's size. A
        fetch that fails in the helper is left to the reader to retry (and
        see the error).
    A range: `range_chunks` consecutive chunks of those to fetch, one query.
    on_fetch(n): called with the bytes of every query's result (a metric).
    bytes_fetched: bytes fetched from MongoDB so far (what it cost, unlike the
        bytes read, which count zeros and chunks read twice).
    wait_seconds: how long read() has waited for MongoDB so far.
    """

    def __init__(self, db, bucket: str, file_id, range_chunks: int = RANGE_CHUNKS, *,
                 skip: Iterable[Range] | None = None, read_ahead: int = 0,
                 on_fetch: Callable[[int], object] | None = None):
        doc = db[f"{bucket}.files"].find_one({"_id": file_id})
        if doc is None:
            raise gridfs.errors.NoFile(f"no file in bucket {bucket!r} with _id {file_id!r}")
        self._chunks = db[f"{bucket}.chunks"]
        self._id = file_id
        self.length = int(doc["length"])
        self.chunk_size = int(doc["chunkSize"])
        self._range = max(1, range_chunks)
        self._pos = 0
        self._on_fetch = on_fetch
        self.bytes_fetched = 0
        self.wait_seconds = 0.0  # the reader's, for MongoDB (what read-ahead saves)
        # The chunk numbers to fetch, in order; the k-th range is the k-th run
        # of self._range of them.
        self._needed = _needed_chunks(self.length, self.chunk_size, merge_ranges(skip or ()))
        self._groups = -(-len(self._needed) // self._range)
        self._cond = threading.Condition()
        self._cache: dict[int, dict[int, bytes]] = {}  # range -> its chunks
        self._inflight: set[int] = set()                # ranges the helper is fetching
        self._at: int | None = None                     # the reader's range
        self._prev: int | None = None                   # and the one before
        self._sequential = False                        # it came from the range before
        self._ahead = max(0, read_ahead)
        self._closing = False
        self._helper: threading.Thread | None = None
        if self._ahead and self._groups > 1:
            self._helper = threading.Thread(target=self._read_ahead, name="gridfs-read-ahead", daemon=True)
            self._helper.start()

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self.length if size is None or size < 0 else min(self.length, self._pos + size)
        out = bytearray()
        while self._pos < end:
            n, within = divmod(self._pos, self.chunk_size)
            take = min(end - self._pos, self.chunk_size - within)
            g = self._group_of(n)
            if g is None:  # wholly skipped: never fetched
                piece: bytes = bytes(take)
            else:
                chunk = self._group(g).get(n)
                if chunk is None:
                    raise gridfs.errors.CorruptGridFile(f"chunk {n} of file {self._id} is missing")
                piece = chunk[within:within + take]
                if not piece:
                    raise gridfs.errors.CorruptGridFile(f"chunk {n} of file {self._id} is too short")
            out += piece
            self._pos += len(piece)
        return bytes(out)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._helper is not None:
            # A query in flight cannot be interrupted; its result is dropped.
            self._helper.join(CLOSE_WAIT_S)
        with self._cond:
            self._cache = {}
        super().close()

    # --- ranges of chunks ----------------------------------------------------

    def _group_of(self, n: int) -> int | None:
        i = bisect.bisect_left(self._needed, n)
        if i < len(self._needed) and self._needed[i] == n:
            return i // self._range
        return None

    def _fetch(self, g: int) -> dict[int, bytes]:
        numbers = self._needed[g * self._range:(g + 1) * self._range]
        if numbers[-1] - numbers[0] + 1 == len(numbers):  # a run: one index range scan
            which: dict = {"$gte": numbers[0], "$lte": numbers[-1]}
        else:
            which = {"$in": list(numbers)}
        got = {d["n"]: bytes(d["data"]) for d in self._chunks.find({"files_id": self._id, "n": which})}
        size = sum(len(c) for c in got.values())
        with self._cond:
            self.bytes_fetched += size
        if self._on_fetch is not None:
            self._on_fetch(size)
        return got

    def _group(self, g: int) -> dict[int, bytes]:
        """Range g's chunks: from the cache, from the helper, or fetched now."""
        with self._cond:
            if g != self._at:
                self._sequential = self._at is not None and g == self._at + 1
                # The range left is kept too: a demuxer that jumps to the
                # index (an MP4's moov at the end) comes straight back.
                self._prev, self._at = self._at, g
                for old in [k for k in self._cache if k != self._prev and not g <= k <= g + self._ahead]:
                    del self._cache[old]
                self._cond.notify_all()
            started = time.monotonic()
            while g in self._inflight:
                self._cond.wait()
            got = self._cache.get(g)
        if got is None:
            got = self._fetch(g)
            with self._cond:
                if self._at == g:
                    self._cache[g] = got
        self.wait_seconds += time.monotonic() - started
        return got

    def _next_wanted(self) -> int | None:
        """The first range ahead of the reader the helper should fetch (lock held)."""
        if self._at is None or not self._sequential:
            return None
        for g in range(self._at + 1, min(self._groups, self._at + 1 + self._ahead)):
            if g not in self._cache and g not in self._inflight:
                return g
        return None

    def _read_ahead(self) -> None:
        while True:
            with self._cond:
                g = None
                while not self._closing and g is None:
                    g = self._next_wanted()
                    if g is None:
                        self._cond.wait()
                if self._closing or g is None:
                    return
                self._inflight.add(g)
            got: dict[int, bytes] | None = None
            try:
                got = self._fetch(g)
            except Exception:  # noqa: BLE001 - the reader fetches it again and gets the error
                pass
            finally:  # whatever happened, a reader waiting for g must wake up
                with self._cond:
                    self._inflight.discard(g)
                    if got is not None and self._at is not None and self._at <= g <= self._at + self._ahead:
                        self._cache[g] = got
                    self._cond.notify_all()
            if got is None:
                return  # MongoDB trouble: stay out of the way, the reader copes


def _needed_chunks(length: int, chunk_size: int, skip: list[Range]) -> Sequence[int]:
    """Numbers of the chunks with at least one byte outside `skip` (merged)."""
    count = -(-length // chunk_size)
    if not skip:
        return range(count)
    needed, j = [], 0
    for n in range(count):
        start, end = n * chunk_size, min(length, (n + 1) * chunk_size)
        while j < len(skip) and skip[j][1] <= start:
            j += 1
        if not (j < len(skip) and skip[j][0] <= start and skip[j][1] >= end):
            needed.append(n)
    return needed


def delete_chunks(db, bucket: str, file_id, upto: int | None = None,
                  range_chunks: int = 4 * RANGE_CHUNKS, at_least: int = 0) -> int:
    """Delete the chunks of `file_id`, a range of `n` at a time; `upto`: how many
    there are at most (unknown for an abandoned upload: then until none is left,
    but not before `at_least`: chunks below it may be gone already, e.g. an
    in-progress file deleted while its writer went on). Returns how many went.

    With `upto` known the ranges go from the last down to the first, so a
    delete cut short (its process killed, MongoDB unreachable) always leaves
    chunks 0..k: a second delete_file, which no longer knows the count (the
    files document went first), finds them by going up from 0 to the first
    empty range."""
    chunks = db[f"{bucket}.chunks"]
    if upto is not None:
        # Anything past the expected count (should not happen) goes in one go.
        deleted = chunks.delete_many({"files_id": file_id, "n": {"$gte": upto}}).deleted_count
        for n in range((upto - 1) // range_chunks * range_chunks, -1, -range_chunks):
            deleted += chunks.delete_many({"files_id": file_id,
                                           "n": {"$gte": n, "$lt": n + range_chunks}}).deleted_count
        return deleted
    deleted, n = 0, 0
    while True:
        gone = chunks.delete_many({"files_id": file_id,
                                   "n": {"$gte": n, "$lt": n + range_chunks}}).deleted_count
        deleted += gone
        n += range_chunks
        # Chunks are written in order, so the first empty range is the end (no
        # open-ended query: that may scan the whole collection).
        if gone == 0 and n >= at_least:
            return deleted


def delete_file(db, bucket: str, file_id) -> bool:
    """Delete a GridFS file: its files document first (so it stops existing at
    once), then its chunks in ranges. False if there was no files document
    (its chunks, if any, are deleted anyway). A complete file's leftover
    in-progress record goes too; a file still being written keeps its record
    (storage/gridfs_upload.py): its writer may store more chunks before it
    notices, and then abort() them, or die and leave them to the janitor."""
    doc = db[f"{bucket}.files"].find_one_and_delete({"_id": file_id})
    upto = None
    if doc is not None and doc.get("chunkSize"):
        upto = -(-int(doc["length"]) // int(doc["chunkSize"]))
    delete_chunks(db, bucket, file_id, upto)
    if doc is not None:
        db[f"{bucket}.uploads"].delete_one({"_id": file_id})
    return doc is not None
