"""Mutated media (issue #4): a corpus of truncated, bit-flipped and
header-corrupted files, made here from valid ones with fixed seeds, never
leaves a job unresolved. Each ends DONE (one MP3) or FAILED with a reason a
person can read, and the converter keeps consuming afterwards.

A file that crashes its worker outright (a decoder segfault) is the other
half of the promise: the worker is replaced and the file dead-lettered after
at most 3 deliveries. This corpus crashes nothing today, so this test only
checks that if a crash happens it ended that way; the path itself is proven
with forced kills in test_converter.py.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from testkit.faults import user_client, worker_pids
from testkit.media import make_media
from testkit.testbed import queue_depth
from video2mp3.domain.queue import MAX_DELIVERIES
from video2mp3.media.v1 import media_pb2

SERVICES = ("auth", "gateway", "converter")
WORKERS = 2

# Valid sources: (file name, make_media arguments), 2 s each.
SOURCES: dict[str, dict[str, Any]] = {
    "clip.mp4": dict(),                                         # h264 + aac, moov at the end
    "clip.mkv": dict(audio_codec="libopus"),                    # h264 + opus
    "clip.webm": dict(audio_codec="libopus"),                   # vp8 + opus
    "clip.avi": dict(audio_codec="mp3"),                        # mpeg4 + mp3
    "song.mp3": dict(video_codec=None, audio_codec="mp3"),      # copied, not re-encoded
    "tone.wav": dict(video_codec=None, audio_codec="pcm_s16le"),
    "tone.ogg": dict(video_codec=None, audio_codec="vorbis"),
}


def mutations(name: str, data: bytes) -> dict[str, bytes]:
    """Eight damaged copies of `data`, the same every run for the same input."""
    out = {f"truncated{int(keep * 100)}": data[:int(len(data) * keep)] for keep in (0.1, 0.5, 0.9)}
    for flips in (10, 100, 1000):
        rng, b = random.Random(f"{name}-flip{flips}"), bytearray(data)
        for _ in range(flips):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        out[f"flipped{flips}"] = bytes(b)
    rng = random.Random(f"{name}-header")
    b = bytearray(data)
    b[:64] = rng.randbytes(64)  # magic numbers and the first header fields gone
    out["header64"] = bytes(b)
    b = bytearray(data)
    for i in range(4, 512, 7):  # the magic intact, the header fields around it garbled
        b[i] = rng.randrange(256)
    out["header512"] = bytes(b)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, bytes]:
    """{upload name: bytes}: the valid sources and their mutations."""
    folder = tmp_path_factory.mktemp("mutated")
    files = {}
    for name, kw in SOURCES.items():
        data = Path(make_media(folder / name, duration=2.0, **kw)).read_bytes()
        files[name] = data
        stem, ext = name.rsplit(".", 1)
        for kind, mutated in mutations(name, data).items():
            files[f"{stem}-{kind}.{ext}"] = mutated
    return files


def test_every_mutated_file_ends_done_or_failed_and_the_converter_goes_on(
        mesh_factory, store, corpus, rabbitmq_server):
    stack = mesh_factory(services=SERVICES, CONVERTER_WORKERS=WORKERS)
    client = user_client(stack)
    jobs = {name: client.upload(data, filename=name).job_id for name, data in corpus.items()}

    final = {name: store.wait_final(job_id, timeout=180) for name, job_id in jobs.items()}
    log = stack.log_tail("converter", 5000)
    crashed = "exited (code" in log  # the supervisor replaced a worker

    outcome = {}
    for name, job in final.items():
        assert job["attempts"] <= MAX_DELIVERIES, (name, job["attempts"])
        if job["state"] == "DONE":
            store.assert_one_mp3(job["_id"])
            outcome[name] = "DONE"
        else:
            assert job["error"].strip(), f"{name} FAILED without a reason"
            assert store.mp3_files(job["_id"]) == [], name
            assert job["pending_mp3_fids"] == [], name
            if "stopped unexpectedly" in job["error"]:
                assert crashed, f"{name}: dead-lettered although no worker crashed"
            outcome[name] = f"FAILED: {job['error']}"
    for name in SOURCES:  # the undamaged originals all convert
        assert outcome[name] == "DONE", (name, outcome[name])
    # Every failure was foreseen and explained, none was an error of ours.
    assert "unexpected error" not in log, log[log.index("unexpected error") - 2000:][:4000]
    assert any(o.startswith("FAILED") for o in outcome.values())  # the corpus does damage

    # Still consuming, with all its workers.
    after = client.upload(corpus["clip.mp4"], filename="after.mp4")
    assert client.wait(after.job_id, timeout=60).state == media_pb2.JOB_STATE_DONE
    assert len(worker_pids(stack)) == WORKERS
    assert queue_depth(rabbitmq_server, stack.env["QUEUE_NAME"]) == (0, WORKERS)


# -- regressions the corpus found, checked on the transcoder directly -----------



