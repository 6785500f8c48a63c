"""The orphan-chunk janitor: removes what an upload killed mid-stream left behind.

An upload writes its GridFS chunks as the bytes arrive and the `files`
document only when it completes, and aborts (deleting its chunks) on every
failure the gateway lives through. A gateway that is SIGKILLed, or loses the
machine, mid-upload cannot abort: its chunks stay, with no `files` document.

This thread deletes such chunks from the `videos` bucket: those whose file
has no `files` document and whose newest chunk is older than ORPHAN_CHUNK_AGE_S
(by the chunk's ObjectId, i.e. when the gateway wrote it). An upload still in
progress writes a chunk at least every 255 KiB, so it is never taken as long as
it keeps moving; the age must be longer than any pause an upload may take
(Envoy resets a stream idle for 300 s, so the default of an hour is ample).
Every gateway replica may run it: the deletes are idempotent.
"""
from __future__ import annotations

import datetime as dt
import logging

import pymongo.errors
from bson import ObjectId

from common.mongo import VIDEOS_BUCKET
from common.periodic import Periodic

log = logging.getLogger(__name__)


class OrphanChunkJanitor:
    def __init__(self, db, *, max_age_s: float, interval_s: float, bucket: str = VIDEOS_BUCKET):
        self.files = db[f"{bucket}.files"]
        self.chunks = db[f"{bucket}.chunks"]
        self.max_age_s = max_age_s
        self.interval_s = interval_s
        self._loop = Periodic("orphan-janitor", interval_s, self.sweep,
                              errors=(pymongo.errors.PyMongoError,))

    def start(self) -> OrphanChunkJanitor:
        self._loop.start()
        return self

    def stop(self) -> None:
        self._loop.stop()

    def sweep(self, now: dt.datetime | None = None) -> int:
        """Deletes the chunks of every abandoned upload; returns how many chunks went."""
        now = now or dt.datetime.now(dt.UTC)
        cutoff = ObjectId.from_datetime(now - dt.timedelta(seconds=self.max_age_s))
        deleted = 0
        # Only files with at least one chunk older than the cutoff can qualify.
        for fid in self.chunks.distinct("files_id", {"_id": {"$lt": cutoff}}):
            if self.files.find_one({"_id": fid}, {"_id": 1}) is not None:
                continue  # a complete file
            if self.chunks.find_one({"files_id": fid, "_id": {"$gte": cutoff}}, {"_id": 1}) is not None:
                continue  # still being written
            n = self.chunks.delete_many({"files_id": fid, "_id": {"$lt": cutoff}}).deleted_count
            deleted += n
            log.info("removed %d orphan chunk(s) of abandoned upload %s", n, fid)
        return deleted
