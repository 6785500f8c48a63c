"""Retention against real processes: videos, MP3s and job records go when
their time is up (tiny VIDEO_RETENTION / MP3_RETENTION / JOB_RETENTION),
swept by two gateways at once over a database of its own, and GridFS shrinks
accordingly (files and chunks)."""
from __future__ import annotations

import re
import time
import uuid
from typing import Any

import grpc
import pymongo
import pytest
import requests

from localmesh.processes import wait_for
from testkit.faults import user_client
from video2mp3.media.v1 import media_pb2

VIDEO_S, MP3_S, JOB_S = 2, 5, 9


@pytest.fixture
def isolated_db(mongo_server):
    """A database of its own: these sweeps must not expire the session's jobs."""
    name = f"v2m_retention_{uuid.uuid4().hex[:8]}"
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        mongo_server.build(mongo_server.host, mongo_server.port, name)
    )
    yield mongo_server.build(mongo_server.host, mongo_server.port, name), client[name]
    client.drop_database(name)
    client.close()


def gridfs_counts(db, fids, bucket) -> tuple[int, int]:
    return (db[f"{bucket}.files"].count_documents({"_id": {"$in": fids}}),
            db[f"{bucket}.chunks"].count_documents({"files_id": {"$in": fids}}))


def swept_totals(*stacks) -> dict[str, int]:
    totals = {"videos": 0, "mp3s": 0, "jobs": 0}
    for stack in stacks:
        for m in re.finditer(r"retention sweep deleted (\d+) video\(s\), (\d+) MP3\(s\), (\d+) job",
                             stack.logs["gateway"].read_text()):
            for key, n in zip(totals, m.groups(), strict=True):
                totals[key] += int(n)
    return totals


def test_files_and_jobs_expire_swept_by_two_gateways(mesh_factory, isolated_db, clip):
    uri, db = isolated_db
    settings = dict(MONGO_URI=uri, VIDEO_RETENTION=VIDEO_S, MP3_RETENTION=MP3_S,
                    JOB_RETENTION=JOB_S, RETENTION_SWEEP_INTERVAL_S=0.2)
    one = mesh_factory(**settings)
    two = mesh_factory(services=("gateway",), **settings)  # a second replica, sweeping too
    client = user_client(one, one.envoy_addr)
    jobs = [client.wait(client.upload(clip).job_id) for _ in range(4)]
    assert all(j.state == media_pb2.JOB_STATE_DONE for j in jobs)
    ids = [j.job_id for j in jobs]
    docs = list(db.jobs.find({"_id": {"$in": ids}}))
    videos, mp3s = [d["video_fid"] for d in docs], [d["mp3_fid"] for d in docs]
    for j in jobs:  # AIP-214: when the files and the record go
        assert j.expire_time.seconds == j.complete_time.seconds + MP3_S
        assert j.purge_time.seconds == j.complete_time.seconds + JOB_S
    first_done = min(j.complete_time.ToDatetime().timestamp() for j in jobs)
    assert time.time() - first_done < VIDEO_S, "too slow to see the videos before they expire"
    assert gridfs_counts(db, videos, "videos")[0] == 4  # VIDEO_RETENTION keeps them a while

    wait_for("the videos to go", lambda: gridfs_counts(db, videos, "videos") == (0, 0), timeout=15)
    assert gridfs_counts(db, mp3s, "mp3s")[0] == 4
    job = client.job(ids[0])
    assert job.state == media_pb2.JOB_STATE_DONE

    wait_for("the MP3s to go", lambda: gridfs_counts(db, mp3s, "mp3s") == (0, 0), timeout=15)
    # The job is kept, as a tombstone: the download says it expired, not "no such job".
    with pytest.raises(grpc.RpcError) as e:
        client.download(ids[0])
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expired" in e.value.details()
    r = requests.get(f"{one.rest_base_url}/v1/jobs/{ids[0]}/mp3",
                     headers={"Authorization": f"Bearer {client.token}"}, timeout=10)
    assert r.status_code == 410, r.text
    body = r.json()
    assert body["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "upload the video again" in body["message"]
    info = next(d for d in body["details"] if d["@type"].endswith("ErrorInfo"))
    assert info["reason"] == "MP3_EXPIRED"
    assert info["metadata"]["job_id"] == ids[0]
    assert client.job(ids[0]).state == media_pb2.JOB_STATE_DONE

    wait_for("the job records to go",
             lambda: db.jobs.count_documents({"_id": {"$in": ids}}) == 0, timeout=15)
    with pytest.raises(grpc.RpcError) as e:
        client.job(ids[0])
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # Each thing was deleted once between the two sweepers, and neither complained.
    time.sleep(0.5)
    assert swept_totals(one, two) == {"videos": 4, "mp3s": 4, "jobs": 4}, swept_totals(one, two)
    for stack in (one, two):
        log = stack.logs["gateway"].read_text()
        assert "retention-sweep:" not in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    assert db["mp3s.chunks"].count_documents({}) == 0
    assert db["videos.chunks"].count_documents({}) == 0
