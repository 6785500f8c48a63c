"""A job's several MP3s (split_chapters) in a real store: recorded when DONE
(JobStore.add_part, finish_done), read back as Job.files, and every one of
them deleted by retention, whether the MP3s expire or the job goes."""
from __future__ import annotations

import datetime as dt

import pytest
from bson import ObjectId

from video2mp3.domain import jobs, mp3_files, retention
from video2mp3.media.v1 import media_pb2
from video2mp3.storage.gridfs_upload import ChunkedUpload
from video2mp3.storage.mongo import MP3S_BUCKET


@pytest.fixture
def mongo(mongo_server):
    with mongo_server.scratch("mp3files") as m:
        yield m


def _mp3(mongo, fid: ObjectId, size: int = 300_000) -> None:
    up = ChunkedUpload(mongo.db, MP3S_BUCKET, "part.mp3", file_id=fid)
    up.write(b"\xff" * size)
    up.close()


def _done_split_job(mongo, store: jobs.JobStore, parts: int = 3) -> tuple[str, list[ObjectId]]:
    job_id = jobs.new_job_id()
    store.create(job_id=job_id, user_id="u1", user_email="u@example.com", filename="talk.mp4",
                 video_fid=ObjectId(), video_size=0, options=media_pb2.ConversionOptions())
    first = ObjectId()
    assert store.start_attempt(job_id, first, 60) is not None
    fids = [first]
    for _ in range(parts - 1):
        fid = ObjectId()
        assert store.add_part(job_id, first, fid)  # recorded before it is written
        fids.append(fid)
    assert set(_job(store, job_id).pending_mp3_fids) == set(fids)
    for fid in fids:
        _mp3(mongo, fid)
    files = tuple(mp3_files.Mp3File(fid, mp3_files.part_name("talk.mp4", n, parts, f"Ch {n}"), 300_000, track=n,
                                    title=f"Ch {n}") for n, fid in enumerate(fids, 1))
    assert store.finish_done(job_id, first, 300_000 * parts, files)
    return job_id, fids


def _job(store: jobs.JobStore, job_id: str) -> jobs.Job:
    job = store.get(job_id)
    assert job is not None
    return job


def _stored(mongo, fids: list[ObjectId]) -> int:
    return (mongo.db[f"{MP3S_BUCKET}.files"].count_documents({"_id": {"$in": fids}})
            + mongo.db[f"{MP3S_BUCKET}.chunks"].count_documents({"files_id": {"$in": fids}}))


def test_files_recorded_and_read_back(mongo):
    store = jobs.JobStore(mongo.jobs)
    job_id, fids = _done_split_job(mongo, store)
    job = _job(store, job_id)
    assert job.pending_mp3_fids == ()
    assert [(f.fid, f.track, f.title) for f in job.files] == [(fid, n, f"Ch {n}") for n, fid in enumerate(fids, 1)]
    assert job.split
    proto = jobs.to_proto(job)
    assert [f.name for f in proto.files] == ["talk - 01 - Ch 1.mp3", "talk - 02 - Ch 2.mp3", "talk - 03 - Ch 3.mp3"]


def test_add_part_refused_once_the_lease_is_lost(mongo):
    store = jobs.JobStore(mongo.jobs)
    job_id = jobs.new_job_id()
    store.create(job_id=job_id, user_id="u1", user_email="", filename="a.mp4", video_fid=ObjectId(), video_size=0,
                 options=media_pb2.ConversionOptions())
    mine, theirs = ObjectId(), ObjectId()
    store.start_attempt(job_id, mine, 0)
    store.start_attempt(job_id, theirs, 60)  # my lease ran out: another attempt took it
    assert not store.add_part(job_id, mine, ObjectId())


def test_expiry_deletes_every_part(mongo):
    store = jobs.JobStore(mongo.jobs)
    job_id, fids = _done_split_job(mongo, store)
    assert _stored(mongo, fids) > len(fids)
    later = jobs.now() + dt.timedelta(seconds=10)
    counts = retention.sweep(mongo, store, retention.RetentionSettings(mp3_s=1, job_s=3600, video_s=0), later)
    assert counts["mp3s"] == 1
    assert _stored(mongo, fids) == 0
    job = _job(store, job_id)
    assert job.mp3_expired
    assert job.files == ()


def test_deleting_the_job_deletes_every_part(mongo):
    store = jobs.JobStore(mongo.jobs)
    job_id, fids = _done_split_job(mongo, store)
    job = store.mark_deleted(job_id, "u1")
    assert job is not None
    retention.delete_job(mongo, store, job)
    assert _stored(mongo, fids) == 0
    assert store.get(job_id) is None
