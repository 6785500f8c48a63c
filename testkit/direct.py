"""Submit conversion jobs straight to MongoDB and RabbitMQ, as the gateway
would, without the gateway: for converter tests and benchmarks that measure
the converter alone."""
from __future__ import annotations

import os

from bson import ObjectId

from video2mp3.core.settings import MongoSettings, RabbitSettings, load
from video2mp3.domain import jobs
from video2mp3.domain.queue import Publisher
from video2mp3.media.v1 import media_pb2
from video2mp3.storage.mongo import Mongo


class DirectSubmitter:
    def __init__(self, env: dict):
        # The services' own settings readers, so variable names never drift.
        self.mongo = Mongo(load(MongoSettings, env))
        self.publisher = Publisher(load(RabbitSettings, env))
        self.jobs = jobs.JobStore(self.mongo.jobs)

    def store(self, path, user_id: str = "bench") -> ObjectId:
        """Store a video in GridFS; returns its id."""
        with open(path, "rb") as f:
            return self.mongo.videos.upload_from_stream(os.path.basename(path), f,
                                                        metadata={"user_id": user_id})

    def submit(self, path, user_id: str = "bench", options: media_pb2.ConversionOptions | None = None,
               video_fid: ObjectId | None = None) -> str:
        """Record a QUEUED job for the video at `path` and publish it; the video is
        stored first unless `video_fid` says where it already is. Returns the job id."""
        fid = video_fid or self.store(path, user_id)
        job = self.jobs.create(
            job_id=jobs.new_job_id(), user_id=user_id, user_email=f"{user_id}@example.com",
            filename=os.path.basename(path), video_fid=fid, video_size=os.path.getsize(path),
            options=options or media_pb2.ConversionOptions(bitrate_kbps=192, channels=2))
        self.publisher.publish(jobs.task_for(job))
        self.jobs.mark_published(job.id)
        return job.id

    def close(self) -> None:
        self.publisher.close()
        self.mongo.close()
