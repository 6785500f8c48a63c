"""Where MP3s go: GridFS bucket `mp3s`, written as a stream, and the job's
record of the MP3s being written.

The transcoder cannot seek its output (a GridFS upload stream), so the one
thing it learns only at the end, the Xing/LAME info frame, is written over
the stored bytes in place afterwards (same length, so only chunk data changes).

Exactly one MP3 per job (one per chapter with split_chapters, each recorded
like the first: JobStore.add_part): each attempt writes a new GridFS id that the job
records (`pending_mp3_fids`) before anything is written, so an attempt that
fails deletes its own (discard) and the next one deletes those of attempts
that crashed (delete_leftovers).
"""
from __future__ import annotations

import logging

import pymongo.errors
from bson import ObjectId

from video2mp3.domain.jobs import Job, JobStore
from video2mp3.storage.gridfs_download import delete_file
from video2mp3.storage.gridfs_upload import ChunkedUpload
from video2mp3.storage.mongo import MP3S_BUCKET, Mongo

log = logging.getLogger(__name__)


class Mp3Store:
    def __init__(self, mongo: Mongo, jobs: JobStore) -> None:
        self.mongo = mongo
        self.jobs = jobs

    def open(self, mp3_fid: ObjectId, job: Job, track: int = 1) -> ChunkedUpload:
        """A new MP3 for `job` (chapter `track` of a split), written as a
        stream; it exists once closed. The name a download gets is the job's
        record's (domain/mp3_files.py), not this one."""
        stem = (job.filename or "audio").rsplit(".", 1)[0] or "audio"
        name = f"{stem}.mp3" if track == 1 else f"{stem} - {track:02d}.mp3"
        return ChunkedUpload(
            self.mongo.db, MP3S_BUCKET, name, file_id=mp3_fid, chunk_db=self.mongo.chunk_db,
            metadata={"job_id": job.id, "user_id": job.user_id, "content_type": "audio/mpeg", "track": track},
        )

    def patch(self, file_id: ObjectId, offset: int, data: bytes) -> None:
        """Overwrite len(data) bytes at `offset` of a stored MP3."""
        files, chunks = self.mongo.db[f"{MP3S_BUCKET}.files"], self.mongo.db[f"{MP3S_BUCKET}.chunks"]
        doc = files.find_one({"_id": file_id}, {"chunkSize": 1})
        if doc is None:
            raise ValueError(f"no GridFS file {file_id} to patch")
        chunk_size = doc["chunkSize"]
        pos = 0
        while pos < len(data):
            n, within = divmod(offset + pos, chunk_size)
            chunk = chunks.find_one({"files_id": file_id, "n": n})
            if chunk is None:
                raise ValueError(f"patch at {offset} runs past the end of file {file_id}")
            buf = bytearray(chunk["data"])
            take = min(len(data) - pos, len(buf) - within)
            if take <= 0:
                raise ValueError(f"patch at {offset} runs past the end of file {file_id}")
            buf[within:within + take] = data[pos:pos + take]
            chunks.update_one({"_id": chunk["_id"]}, {"$set": {"data": bytes(buf)}})
            pos += take

    def discard(self, job_id: str, mp3_fid: ObjectId, upload: ChunkedUpload | None = None) -> None:
        """Delete an attempt's MP3. `upload` while still writing: its abort()
        deletes every chunk it stored by number, even after a DeleteJob removed
        the first ones (ranged deletes stop at the first empty range)."""
        if upload is not None and not upload.closed:
            upload.abort()
        self._delete(mp3_fid)
        self.jobs.forget_pending(job_id, [mp3_fid])

    def discard_quietly(self, job_id: str, mp3_fid: ObjectId, upload: ChunkedUpload | None = None) -> None:
        """Drop an attempt and hand the job back, best effort while MongoDB may
        be down; the next attempt cleans up whatever is left."""
        try:
            self.discard(job_id, mp3_fid, upload)
            self.jobs.release(job_id, mp3_fid)
        except pymongo.errors.PyMongoError:
            pass

    def delete_leftovers(self, job_id: str, leftovers: list[ObjectId]) -> None:
        """MP3s of earlier attempts that crashed mid-write."""
        for fid in leftovers:
            self._delete(fid)
        if leftovers:
            self.jobs.forget_pending(job_id, leftovers)
            log.info("job %s: removed %d half-written MP3(s) of earlier attempts", job_id, len(leftovers))

    def _delete(self, file_id: ObjectId) -> None:
        """A (possibly half-written) MP3: its chunks even when no files document exists."""
        delete_file(self.mongo.db, MP3S_BUCKET, file_id)
