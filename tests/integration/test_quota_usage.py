"""What a user's storage holds (gateway/quotas.py, Quotas.snapshot) over
real job documents: a video counts until its job ends when VIDEO_RETENTION=0
(the converter announces the end, then deletes the video), and until the
retention sweep deletes it otherwise; an MP3 counts from DONE."""
from __future__ import annotations

import pytest
from bson import ObjectId

from video2mp3.core.settings import load
from video2mp3.domain import jobs
from video2mp3.domain.limits import JobLimits
from video2mp3.domain.retention import RetentionSettings
from video2mp3.gateway.quotas import Quotas, QuotaSettings
from video2mp3.media.v1 import media_pb2

VIDEO, MP3 = 5_000_000, 400_000


@pytest.fixture
def mongo(mongo_server):
    with mongo_server.scratch("quotausage") as m:
        yield m


def _quotas(mongo, store: jobs.JobStore, video_retention_s: float) -> Quotas:
    env = {"VIDEO_RETENTION": str(video_retention_s)}
    return Quotas(mongo.db, store, load(QuotaSettings, env), load(JobLimits, env), load(RetentionSettings, env))


def _job(store: jobs.JobStore, user: str, *, done: bool) -> str:
    job_id = jobs.new_job_id()
    store.create(job_id=job_id, user_id=user, user_email="u@example.com", filename="a.mp4",
                 video_fid=ObjectId(), video_size=VIDEO, options=media_pb2.ConversionOptions())
    if done:
        mp3 = ObjectId()
        assert store.start_attempt(job_id, mp3, 60) is not None
        assert store.finish_done(job_id, mp3, MP3)
    return job_id


@pytest.mark.parametrize(("video_retention_s", "held_when_done"), [(0, MP3), (3600, VIDEO + MP3)])
def test_a_finished_jobs_video_counts_only_while_retention_keeps_it(mongo, video_retention_s, held_when_done):
    store = jobs.JobStore(mongo.jobs)
    quotas = _quotas(mongo, store, video_retention_s)
    user = f"u-{ObjectId()}"
    _job(store, user, done=False)
    assert quotas.snapshot(user, jobs.now()).storage_bytes == VIDEO  # waiting: its video is held
    done = _job(store, user, done=True)
    assert quotas.snapshot(user, jobs.now()).storage_bytes == VIDEO + held_when_done
    store.forget_video(done)  # deleted (at once, or by the sweep): only its MP3 is left
    assert quotas.snapshot(user, jobs.now()).storage_bytes == VIDEO + MP3
