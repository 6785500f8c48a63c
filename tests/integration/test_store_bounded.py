"""The embedded store does not grow with what was ever uploaded (docs/operations.md "Big files").

An on-disk SecantusDB started the way `make run` starts it (localmesh/processes.py's
argv and environment), videos written with the gateway's chunk writer and
deleted the way retention deletes them, round after round: once the first
round has set the high-water mark, later rounds reuse the space the deleted
ones gave back; and the store's compactor (localmesh/secantusd.py) gives that
space back to the disk. `make bench-day` does the same through the whole mesh
at ~15 GB.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import ObjectId

from localmesh.processes import Child, free_port, secantusd_argv, secantusd_env, wait_for, wait_for_mongo
from testkit.bigmesh import disk_usage
from video2mp3.storage.gridfs_download import delete_file
from video2mp3.storage.gridfs_upload import ChunkedUpload

MB = 2**20
FILE_MB = 96
FILES = 2  # written at once, as two uploads are
ROUNDS = 4


@pytest.fixture
def embedded_store(tmp_path):
    """start(compact_every_s) -> (client, data folder): the store as make run starts it."""
    children = []
    clients: list[pymongo.MongoClient[dict[str, Any]]] = []

    def start(compact_every_s: float) -> tuple[pymongo.MongoClient[dict[str, Any]], Path]:
        port = free_port()
        data = tmp_path / f"mongo-{port}"
        data.mkdir()
        child = Child("mongo", secantusd_argv(port, data, compact_every_s=compact_every_s),
                      env=secantusd_env(), cwd=data, log_path=tmp_path / f"mongo-{port}.log").start()
        children.append(child)
        uri = f"mongodb://127.0.0.1:{port}/bounded?directConnection=true"
        wait_for_mongo(uri, timeout=60, child=child)
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri)
        clients.append(client)
        return client, data

    yield start
    for client in clients:
        client.close()
    for child in children:
        assert child.stop(15) == 0, child.log_tail()


def _one_round(db, block: bytes, *, delete: bool = True) -> list[ObjectId]:
    ids = [ObjectId() for _ in range(FILES)]
    ups = [ChunkedUpload(db, "videos", f"video-{i}.mp4", file_id=file_id) for i, file_id in enumerate(ids)]
    for up in ups:
        up.write_behind()
    for _ in range(FILE_MB):
        for up in ups:
            up.write(block)
    for up in ups:
        up.close()
    if delete:
        for file_id in ids:
            assert delete_file(db, "videos", file_id)
    return ids


def _settled_size(client, data: Path) -> int:
    # A checkpoint (what `fsync` does) hands the deleted chunks' pages back to
    # the store for reuse and lets its journal files go; the store makes one
    # every 10 s on its own.
    client.admin.command("fsync")
    client.admin.command("fsync")
    return disk_usage(data)


def test_the_data_folder_stops_growing_when_videos_are_deleted(embedded_store):
    client, data = embedded_store(compact_every_s=0)  # reuse alone, without compaction
    db = client.get_database()
    block = os.urandom(MB)  # incompressible, as video is
    sizes = []
    for _ in range(ROUNDS):
        _one_round(db, block)
        sizes.append(_settled_size(client, data))
    assert db["videos.chunks"].estimated_document_count() == 0
    one_round = FILES * FILE_MB * MB
    # Each byte is stored once (no oplog copy) and each round reuses the
    # space the last one's deletes gave back: the folder holds about one
    # round's videos whatever was written before (measured ~0.5-0.9 of a
    # round; as a replica set, with its oplog, 2.6-3.6 rounds).
    assert max(sizes) < 1.5 * one_round, [s // MB for s in sizes]
    assert sizes[-1] <= sizes[0] + one_round // 2, [s // MB for s in sizes]


def test_compaction_gives_the_space_of_deleted_videos_back_to_the_disk(embedded_store):
    client, data = embedded_store(compact_every_s=1)
    db = client.get_database()
    db["mp3s.chunks"].insert_one({"kept": os.urandom(MB)})  # what stays must survive it
    ids = _one_round(db, os.urandom(MB), delete=False)
    held = _settled_size(client, data)
    assert held > FILES * FILE_MB * MB
    for file_id in ids:
        assert delete_file(db, "videos", file_id)
    # WiredTiger would keep its files at `held` for good, reusing the space
    # inside; the compactor (localmesh/secantusd.py) cuts them down.
    wait_for("the store's folder to shrink",
             lambda: _settled_size(client, data) < held // 4, timeout=120, interval=1)
    assert len(db["mp3s.chunks"].find_one({})["kept"]) == MB
