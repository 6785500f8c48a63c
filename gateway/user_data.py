"""Everything one user owns in MongoDB, deleted (DeleteMyData, for account deletion).

Idempotent, so a retry after a partial failure finishes the job. GridFS files
go before the jobs that point at them; a conversion running meanwhile may
still write its MP3, which the converter drops once it finds its job gone.
"""
from __future__ import annotations

import gridfs.errors

from common.mongo import Mongo


def delete_user_data(mongo: Mongo, user_id: str) -> tuple[int, int, int]:
    """(jobs, videos, MP3s) deleted."""
    counts = []
    for bucket, files in ((mongo.videos, mongo.db["videos.files"]), (mongo.mp3s, mongo.db["mp3s.files"])):
        n = 0
        for doc in files.find({"metadata.user_id": user_id}, {"_id": 1}):
            try:
                bucket.delete(doc["_id"])
                n += 1
            except gridfs.errors.NoFile:  # deleted concurrently
                pass
        counts.append(n)
    jobs = mongo.jobs.delete_many({"user_id": user_id}).deleted_count
    # Upload reservations (gateway/request_ids.py) go too: nothing of the user is kept.
    mongo.db["requests"].delete_many({"user_id": user_id})
    return jobs, counts[0], counts[1]
