"""The orphan-chunk janitor: removes what an upload killed mid-stream left behind.

An upload writes its GridFS chunks as the bytes arrive and the `files`
document only when it completes, and aborts (deleting its chunks) on every
failure the gateway lives through. A gateway that is SIGKILLed, or loses the
machine, mid-upload cannot abort: its chunks stay, with no `files` document.

Every upload in progress is recorded in `<bucket>.uploads` and refreshed about
every second while it stores chunks (storage/gridfs_upload.py). The gateway runs
one janitor per bucket: `videos` (uploads) and `mp3s` (a conversion's MP3, whose
worker died after its job was deleted: the job, and with it the MP3's id, is
gone, but the record stays). This thread deletes the chunks of uploads
whose record was not refreshed for ORPHAN_CHUNK_AGE_S, then the record. It
never queries the chunks as a whole: a server may build such a query's whole
result (SecantusDB held +1 GB of RSS per 500 MB stored). The age must be
longer than any pause an upload may take (Envoy resets a stream idle for
300 s, so the default of an hour is ample). Every gateway replica may run it:
the deletes are idempotent.

A streamed upload (gateway/early_jobs.py) also has a hidden job; the videos
janitor deletes those whose heartbeat is as old (`stale_jobs`), with their
video chunks and MP3s, before it looks for orphan chunks. A job whose upload
ended is never one of them.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import pymongo.errors

from video2mp3.core.periodic import Periodic
from video2mp3.storage.gridfs_download import RANGE_CHUNKS, delete_chunks
from video2mp3.storage.mongo import VIDEOS_BUCKET

log = logging.getLogger(__name__)


class OrphanChunkJanitor:
    def __init__(self, db, *, max_age_s: float, interval_s: float, bucket: str = VIDEOS_BUCKET,
                 stale_jobs: Callable[[dt.datetime], int] | None = None):
        # stale_jobs(cutoff): deletes hidden jobs of uploads untouched since cutoff.
        self.db, self.bucket = db, bucket
        self.stale_jobs = stale_jobs
        self.files = db[f"{bucket}.files"]
        self.uploads = db[f"{bucket}.uploads"]
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
        cutoff = now - dt.timedelta(seconds=self.max_age_s)
        if self.stale_jobs is not None:
            self.stale_jobs(cutoff)
        deleted = 0
        for rec in list(self.uploads.find({"touched": {"$lt": cutoff}}).limit(1000)):
            fid = rec["_id"]
            if self.files.find_one({"_id": fid}, {"_id": 1}) is None:  # else: it completed
                # Chunks below the record's count may be gone already (an MP3
                # deleted with its job while its worker went on, then died):
                # go at least one range past it, the most written between refreshes.
                n = delete_chunks(self.db, self.bucket, fid,
                                  at_least=int(rec.get("n") or 0) + 4 * RANGE_CHUNKS)
                deleted += n
                log.info("removed %d orphan chunk(s) of abandoned upload %s", n, fid)
            # Only if still stale: a refresh meanwhile means it is alive after all.
            self.uploads.delete_one({"_id": fid, "touched": rec["touched"]})
        return deleted
