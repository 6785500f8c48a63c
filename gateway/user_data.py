"""Everything one user owns in MongoDB, deleted (DeleteMyData, for account deletion).

Idempotent, so a retry after a partial failure finishes the job. GridFS files
go before the jobs that point at them, each a bounded range of chunks per
query (storage/gridfs_download.delete_file; an unbounded chunk query can make
the store build its whole result); a conversion running meanwhile may still
write its MP3, which the converter drops once it finds its job gone.
"""
from __future__ import annotations

from gridfs import DEFAULT_CHUNK_SIZE

from video2mp3.domain.usage import MinutesLedger
from video2mp3.gateway import request_ids, tus, webhooks
from video2mp3.storage.gridfs_download import RANGE_CHUNKS, delete_chunks, delete_file
from video2mp3.storage.mongo import MP3S_BUCKET, VIDEOS_BUCKET, Mongo


def delete_user_data(mongo: Mongo, user_id: str) -> tuple[int, int, int]:
    """(jobs, videos, MP3s) deleted."""
    # Resumable uploads not complete yet: chunks without a files document,
    # found through their transfer state (gateway/tus.py), which goes last.
    for doc in mongo.db[tus.COLLECTION].find({"user_id": user_id}, {"video_fid": 1, "offset": 1}):
        delete_chunks(mongo.db, VIDEOS_BUCKET, doc["video_fid"],
                      at_least=int(doc.get("offset") or 0) // DEFAULT_CHUNK_SIZE + 4 * RANGE_CHUNKS)
        mongo.db[tus.COLLECTION].delete_one({"_id": doc["_id"]})
    counts = []
    for bucket in (VIDEOS_BUCKET, MP3S_BUCKET):
        n = 0
        for doc in mongo.db[f"{bucket}.files"].find({"metadata.user_id": user_id}, {"_id": 1}):
            if delete_file(mongo.db, bucket, doc["_id"]):  # False: deleted concurrently
                n += 1
        counts.append(n)
    jobs = mongo.jobs.delete_many({"user_id": user_id}).deleted_count
    # Upload reservations (gateway/request_ids.py) go too: nothing of the user is kept.
    mongo.db[request_ids.COLLECTION].delete_many({"user_id": user_id})
    # Webhooks and their delivery logs (gateway/webhooks.py).
    webhooks.delete_user_webhooks(mongo.db, user_id)
    # What the user converted, counted for the minutes quota (domain/usage.py).
    MinutesLedger(mongo.db).forget_user(user_id)
    return jobs, counts[0], counts[1]
