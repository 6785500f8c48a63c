"""Reading a GridFS file while it is still being uploaded (convert while uploading).

The gateway stores an upload's chunks as they fill (storage/gridfs_upload.py)
and the files document only at the end; until then every stored chunk is
full, and the length is unknown. GrowingDownload reads such a file front to
back, a bounded range of chunks per query like ChunkedDownload: when the next
chunk is not stored yet it sleeps a little and looks again (two point
queries per look, never a busy loop). The pause adapts to the upload's pace:
each miss makes it 1.5x longer (up to WAIT_MAX_S), each chunk found after a
wait halves it (down to WAIT_FIRST_S), so a slow upload is looked at about
as often as a chunk arrives, a fast one is not made to wait. Once the files
document exists the length is known and the end is exact. Between two looks
it calls `on_wait()`, which is where its caller renews its lease and finds
out that the upload was given up (it raises).

It tells PyAV it cannot seek (seekable() is False), so FFmpeg never jumps to
an end that does not exist yet; seek() and tell() still work for our own
callers that read the head and come back (converter/transcode.py).

    with GrowingDownload(db, "videos", file_id, on_wait=check) as src:
        data = src.read(1 << 20)       # waits for at least one byte, or b"" at the end
"""
from __future__ import annotations

import io
import time
from collections.abc import Callable

import gridfs.errors
from gridfs import DEFAULT_CHUNK_SIZE

from video2mp3.storage.gridfs_download import RANGE_CHUNKS, ChunkReader

WAIT_FIRST_S = 0.025
WAIT_MAX_S = 0.2


class GrowingDownload(ChunkReader):
    def __init__(self, db, bucket: str, file_id, *, on_wait: Callable[[], None] | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, range_chunks: int = RANGE_CHUNKS,
                 on_fetch: Callable[[int], object] | None = None):
        self._files = db[f"{bucket}.files"]
        self._chunks = db[f"{bucket}.chunks"]
        self._id = file_id
        self._on_wait = on_wait
        self.chunk_size = chunk_size  # the writer's (ChunkedUpload's default); checked at the end
        self.length: int | None = None  # known once the upload is complete
        self._range = range_chunks
        self._pos = 0
        self._cache: dict[int, bytes] = {}
        self._delay = WAIT_FIRST_S  # the next pause (see the module doc)
        self._on_fetch = on_fetch  # called with the bytes of every query, like ChunkedDownload's
        self.bytes_fetched = 0

    @property
    def complete(self) -> bool:
        return self.length is not None

    def seekable(self) -> bool:
        return False  # for PyAV: the end is unknown; see the module doc

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            raise io.UnsupportedOperation("the end of a file still uploading is unknown")
        base = self._pos if whence == io.SEEK_CUR else 0
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        """At least one byte (waiting for it), at most `size`; b"" at the end."""
        out = bytearray()
        while size is None or size < 0 or len(out) < size:
            n, within = divmod(self._pos, self.chunk_size)
            data = self._chunk(n, wait=not out)
            if data is None:
                break  # not stored yet, and we have something to return
            want = len(data) - within if size is None or size < 0 else size - len(out)
            piece = data[within:within + want]
            if not piece:
                if self.length is not None:
                    if self._pos >= self.length:
                        break
                    raise gridfs.errors.CorruptGridFile(f"chunk {n} of file {self._id} is too short")
                if out:
                    break
                self.wait_until_complete()  # a short last chunk: the files document is next
                continue
            out += piece
            self._pos += len(piece)
        return bytes(out)


    def close(self) -> None:
        self._cache = {}
        super().close()

    # --- fetching -------------------------------------------------------------

    def _fetch(self, n: int) -> None:
        self._cache = {d["n"]: bytes(d["data"]) for d in self._chunks.find(
            {"files_id": self._id, "n": {"$gte": n, "$lt": n + self._range}})}
        fetched = sum(map(len, self._cache.values()))
        self.bytes_fetched += fetched
        if self._on_fetch is not None and fetched:
            self._on_fetch(fetched)

    def _check_complete(self) -> bool:
        if self.length is None:
            doc = self._files.find_one({"_id": self._id}, {"length": 1, "chunkSize": 1})
            if doc is not None:
                if int(doc["chunkSize"]) != self.chunk_size:
                    raise gridfs.errors.CorruptGridFile(
                        f"file {self._id} has chunks of {doc['chunkSize']} bytes, not {self.chunk_size}")
                self.length = int(doc["length"])
        return self.length is not None

    def _chunk(self, n: int, wait: bool) -> bytes | None:
        """Chunk n; b"" past the end; None if it is not stored yet and not `wait`."""
        waited = False
        while True:
            if n in self._cache:
                return self._cache[n]
            self._fetch(n)
            if n in self._cache:
                if waited:
                    self._delay = max(WAIT_FIRST_S, self._delay / 2)
                return self._cache[n]
            if self._check_complete():
                # Complete: every chunk is stored now (the files document comes last).
                self._fetch(n)
                if n in self._cache:
                    return self._cache[n]
                assert self.length is not None
                if n * self.chunk_size >= self.length:
                    return b""
                raise gridfs.errors.CorruptGridFile(f"chunk {n} of file {self._id} is missing")
            if not wait:
                return None
            self._pause()
            waited = True

    def wait_until_complete(self) -> None:
        """Wait (calling on_wait) until the upload has ended."""
        while not self._check_complete():
            self._pause()

    def _pause(self) -> None:
        if self._on_wait is not None:
            self._on_wait()
        time.sleep(self._delay)
        self._delay = min(WAIT_MAX_S, self._delay * 1.5)
