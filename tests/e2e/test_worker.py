"""Converter worker behaviour against real RabbitMQ and SecantusDB: a long
conversion keeps its AMQP connection alive through heartbeats and is acked
exactly once; a lone long job is encoded on every core."""
from __future__ import annotations

import json
import os
import time

import gridfs
import pytest

from testkit.direct import DirectSubmitter
from testkit.faults import Store
from testkit.media import analyse_mp3, audio_duration, make_media
from testkit.testbed import queue_depth
from video2mp3.converter.split_encode import SEGMENT_FRAMES
from video2mp3.domain import jobs, retention
from video2mp3.media.v1 import media_pb2
from video2mp3.storage.mongo import MP3S_BUCKET

HEARTBEAT_S = 2


def test_long_conversion_keeps_heartbeats_and_is_acked_once(mesh_factory, tmp_path):
    # On one core (no helper threads, one encoder), so the conversion outlasts many heartbeats.
    stack = mesh_factory(services=("converter",), RABBITMQ_HEARTBEAT=str(HEARTBEAT_S), CONVERTER_WORKERS="1",
                         CONVERTER_OVERLAP="off")
    # An hour of 8 kHz mono FLAC is small to make and store, but encoding it
    # as 48 kHz stereo MP3 keeps LAME busy for well over 10 seconds.
    source = make_media(tmp_path / "long.flac", video_codec=None, audio_codec="flac",
                        duration=3600, sample_rate=8000, layout="mono")
    submitter = DirectSubmitter(stack.env)
    job_id = None
    try:
        job_id = submitter.submit(source, options=media_pb2.ConversionOptions(
            bitrate_kbps=64, channels=2, sample_rate_hz=48000))
        doc = Store(stack.env["MONGO_URI"]).wait_final(job_id, timeout=600)
        assert doc["state"] == jobs.DONE, doc["error"]
        converting = (doc["complete_time"] - doc["create_time"]).total_seconds()
        # Not a speed check: the test only proves something if the work spanned
        # many heartbeat intervals (the broker drops a silent peer after ~2),
        # and issue #3 asks for a conversion of at least 10 s.
        assert converting >= 10, f"conversion took only {converting:.1f}s; make the input longer"

        time.sleep(3 * HEARTBEAT_S)  # a lost ack would show up as a redelivery by now
        job = submitter.jobs.get(job_id)
        assert job is not None
        assert job.attempts == 1
        assert job.state == jobs.DONE
        assert queue_depth(stack.env, stack.env["QUEUE_NAME"])[0] == 0
        log = stack.log_tail("converter", 400)
        assert "connection lost" not in log, log
        assert "reconnecting" not in log, log
        assert "duplicate task" not in log, log
    finally:
        # The session's MongoDB is in memory: do not leave ~20 MB behind.
        job = submitter.jobs.get(job_id) if job_id else None
        if job:  # the video went at DONE already (VIDEO_RETENTION=0)
            retention.delete_video(submitter.mongo, job)
            retention.delete_mp3s(submitter.mongo, job)
        submitter.close()


def test_a_lone_long_job_is_encoded_on_every_core_and_stays_gapless(mesh_factory, tmp_path):
    """Two workers, one job, nothing queued: the job is the only work in
    sight, so its track is encoded in segments on its own core and the idle
    worker's (converter/split_encode.py). The stored MP3 plays the whole
    track, sample-exact, and the DONE log line counts the joins."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("splitting needs a second core")
    stack = mesh_factory(services=("converter",), CONVERTER_WORKERS="2", LOG_FORMAT="json")
    seconds = 2.5 * SEGMENT_FRAMES * 1152 / 48000  # ~61 s: two joins
    source = make_media(tmp_path / "song.m4a", video_codec=None, audio_codec="aac",
                        duration=seconds, sample_rate=48000)
    submitter = DirectSubmitter(stack.env)
    store = Store(stack.env["MONGO_URI"])
    job_id = None
    try:
        job_id = submitter.submit(source)
        assert store.wait_final(job_id, timeout=120)["state"] == jobs.DONE
        doc = store.assert_one_mp3(job_id)
        mp3 = gridfs.GridFSBucket(store.db, MP3S_BUCKET).open_download_stream(doc["mp3_fid"]).read()
        duration, freq, rate, channels = analyse_mp3(mp3)
        assert duration == pytest.approx(audio_duration(source), abs=1 / rate)
        assert (rate, channels) == (48000, 2)
        assert abs(freq - 440) < 5
        lines = [json.loads(line) for line in stack.logs["converter"].read_text().splitlines()
                 if line.startswith("{")]
        done = [line for line in lines if line.get("step") == "done"]
        assert [d["encoder_joins"] for d in done] == [2], done
    finally:
        job = submitter.jobs.get(job_id) if job_id else None
        if job:
            retention.delete_video(submitter.mongo, job)
            retention.delete_mp3s(submitter.mongo, job)
        submitter.close()
        store.close()
