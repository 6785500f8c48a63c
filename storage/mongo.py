"""MongoDB access shared by gateway and converter: one client per process,
bounded timeouts, and the collections/buckets both sides use."""
from __future__ import annotations

from typing import Any

import gridfs
import pymongo
from pymongo.uri_parser import parse_uri

from video2mp3.core.settings import MongoSettings

DEFAULT_DB = "video2mp3"
VIDEOS_BUCKET = "videos"
MP3S_BUCKET = "mp3s"


class Mongo:
    def __init__(self, settings: MongoSettings):
        t = settings.timeout_ms
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            settings.uri,
            serverSelectionTimeoutMS=t,
            connectTimeoutMS=t,
            socketTimeoutMS=max(t, 10_000),
            retryWrites=True,
        )
        db_name = parse_uri(settings.uri).get("database") or DEFAULT_DB
        self.db = self.client[db_name]
        # GridFS chunk inserts, which carry nearly every byte written, go
        # through a client without retryable writes: a server records each
        # retryable write (SecantusDB digests the whole 2 MB command and
        # prunes its record table on every write: ~15 % of its CPU per byte
        # stored), and a chunk needs none of that, as its unique (files_id, n)
        # makes our own one retry safe (storage/gridfs_upload.py).
        self.chunk_client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            settings.uri,
            serverSelectionTimeoutMS=t,
            connectTimeoutMS=t,
            socketTimeoutMS=max(t, 10_000),
            retryWrites=False,
        )
        self.chunk_db = self.chunk_client[db_name]
        self.jobs = self.db["jobs"]
        self.videos = gridfs.GridFSBucket(self.db, bucket_name=VIDEOS_BUCKET)
        self.mp3s = gridfs.GridFSBucket(self.db, bucket_name=MP3S_BUCKET)

    def ping(self) -> None:
        self.client.admin.command("ping")

    def close(self) -> None:
        self.client.close()
        self.chunk_client.close()
