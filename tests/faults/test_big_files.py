"""Phone-sized videos: `make run` stays up, bounded and responsive (docs/operations.md "Big files").

All three run `python -m localmesh` itself (testkit/bigmesh.py), with its
embedded on-disk SecantusDB and default flags, on free ports.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pymongo
import pytest

import testkit
from localmesh.processes import wait_for
from testkit.bigmesh import MakeRun
from testkit.clients import RestClient
from testkit.media import make_media

ROOT = testkit.ROOT

pytestmark = pytest.mark.slow


def test_two_phone_videos_stay_under_the_memory_ceilings(tmp_path):
    """bench/big.py at a smaller scale: two ~300 MB 1080p videos, each converted;
    every process under its (scaled) ceiling, every job DONE, nothing restarted."""
    env = dict(os.environ, BIG_FILES="2", BIG_MINUTES="2", BIG_DIR=str(tmp_path),
               BIG_CEILING_SCALE="0.75", BIG_ABORT_RSS_MB="4000")
    r = subprocess.run([sys.executable, "-m", "bench.big"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "RESULT: ok" in r.stdout, r.stdout + r.stderr[-3000:]
    # The videos were deleted once DONE (counted in the store), and its disk
    # stays near its high-water mark: about the videos stored at once and the
    # journal, far below everything ever uploaded.
    assert "videos kept after DONE: 0" in r.stdout, r.stdout
    disk_line = re.search(r"store disk after all DONE: (\d+) MB", r.stdout)
    uploaded_line = re.search(r"uploaded (\d+) MB", r.stdout)
    assert disk_line is not None, r.stdout
    assert uploaded_line is not None, r.stdout
    disk = int(disk_line.group(1))
    uploaded = int(uploaded_line.group(1))
    assert disk < uploaded + 600, r.stdout


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "clip.mp4"
    make_media(path, container="mp4", video_codec="h264", audio_codec="aac", duration=3.0, freq=440.0)
    return path


def _up_and_converting(rest: RestClient, clip: Path) -> None:
    r = rest.upload(clip)
    assert r.status_code == 200, r.text
    assert rest.wait(r.json()["job_id"], timeout=120)["state"] == "JOB_STATE_DONE"


def test_make_run_restarts_a_dead_service_and_the_store(tmp_path, clip):
    run = MakeRun(tmp_path / "mongo", log=tmp_path / "make-run.log").start()
    try:
        rest = RestClient(run.rest_base_url)
        rest.sign_up_and_login()
        for name in ("gateway", "mongo"):
            pid = run.kill(name)
            death = f"{name} (pid {pid}) killed by SIGKILL"
            # (death=death: the loop's value; mypy cannot infer such a lambda, python/mypy#15459)
            line = wait_for(f"{name}'s death to be logged", lambda death=death: next(  # type: ignore[misc]
                (ln for ln in run.log().splitlines() if death in ln), None), timeout=10)
            assert "OOM killer" in line, line
            assert "restarting in" in line, line
            restarted = f"{name} restarted"
            wait_for(
                f"{name} to be restarted",
                lambda restarted=restarted: restarted in run.log(),  # type: ignore[misc]
                timeout=30,
            )
            assert run.pids()[name]
            assert run.pids()[name][0] != pid
        # The services reconnect by themselves: a whole journey works again.
        wait_for("REST to answer", lambda: rest.get("/v1/jobs").status_code == 200, timeout=60)
        _up_and_converting(rest, clip)
    finally:
        code = run.stop()
    assert code == 0, run.log()[-3000:]  # Ctrl-C still stops everything cleanly


@pytest.fixture
def small_fs(tmp_path):
    """A 300 MB tmpfs of our own (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_store_disk_refuses_uploads_and_recovers(tmp_path, small_fs, clip):
    run = MakeRun(small_fs / "mongo", log=tmp_path / "make-run.log", STORAGE_RESERVE_MB="100").start()
    mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        f"mongodb://127.0.0.1:{run.env['MONGO_PORT']}/?directConnection=true"
    )
    balloon = small_fs / "balloon"
    try:
        rest = RestClient(run.rest_base_url)
        rest.sign_up_and_login()
        # Leave 150 MB free: an upload may use ~4x its size on disk for a while,
        # so the 60 MB one below crosses the 100 MB reserve part-way.
        free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
        with open(balloon, "wb") as f:
            f.write(b"\0" * max(0, free - 150 * 2**20))
        big = tmp_path / "big.mp4"
        big.write_bytes(os.urandom(60 * 2**20))
        t = time.monotonic()
        r = rest.upload(big)
        assert r.status_code == 507, r.text
        assert "storage is full" in r.text, r.text
        assert time.monotonic() - t < 30
        # Nothing half-written, and the store still answers.
        db = mongo["video2mp3"]  # make run's database
        wait_for("the refused upload's chunks to be gone",
                 lambda: db["videos.chunks"].count_documents({}) == 0, timeout=30)
        assert db["videos.files"].count_documents({}) == 0
        assert db["jobs"].count_documents({}) == 0
        assert rest.get("/v1/jobs").status_code == 200
        # Space freed: uploads work again.
        balloon.unlink()
        _up_and_converting(rest, clip)
    finally:
        mongo.close()
        code = run.stop()
    assert code == 0, run.log()[-3000:]
