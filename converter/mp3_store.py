"""Where MP3s go: GridFS bucket `mp3s`, written as a stream.

The transcoder cannot seek its output (a GridFS upload stream), so the one
thing it learns only at the end, the Xing/LAME info frame, is written over
the stored bytes in place afterwards (same length, so only chunk data changes).
"""
from __future__ import annotations

import logging

from bson import ObjectId

from video2mp3.domain.jobs import Job
from video2mp3.storage.gridfs_download import delete_file
from video2mp3.storage.gridfs_upload import ChunkedUpload
from video2mp3.storage.mongo import MP3S_BUCKET, Mongo

log = logging.getLogger(__name__)


def open_mp3(mongo: Mongo, mp3_fid: ObjectId, job: Job) -> ChunkedUpload:
    stem = (job.filename or "audio").rsplit(".", 1)[0] or "audio"
    return ChunkedUpload(
        mongo.db, MP3S_BUCKET, f"{stem}.mp3", file_id=mp3_fid,
        metadata={"job_id": job.id, "user_id": job.user_id, "content_type": "audio/mpeg"},
    )


def patch_bytes(mongo: Mongo, file_id: ObjectId, offset: int, data: bytes) -> None:
    """Overwrite len(data) bytes at `offset` of a stored GridFS file."""
    files, chunks = mongo.db[f"{MP3S_BUCKET}.files"], mongo.db[f"{MP3S_BUCKET}.chunks"]
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


def delete_quietly(mongo: Mongo, file_id: ObjectId) -> None:
    """Delete a (possibly half-written) MP3: its chunks even when no files document exists."""
    delete_file(mongo.db, MP3S_BUCKET, file_id)
