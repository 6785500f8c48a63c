"""storage/gridfs_growing.py against real SecantusDB: a file read while a writer
(ChunkedUpload, as the gateway uses it) is still storing it."""
from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import gridfs.errors
import pytest

from testkit.media import make_media, mp3_bytes
from video2mp3.storage.gridfs_growing import GrowingDownload
from video2mp3.storage.gridfs_upload import ChunkedUpload


@pytest.fixture
def db(mongo_server):
    with mongo_server.scratch("growing") as m:
        yield m.db


def slow_writer(db, data: bytes, piece: int, pause_s: float,
                abort: bool = False) -> tuple[ChunkedUpload, threading.Thread]:
    up = ChunkedUpload(db, "videos", "v.bin")

    def run():
        for i in range(0, len(data), piece):
            up.write(data[i:i + piece])
            time.sleep(pause_s)
        if abort:
            up.abort()
        else:
            up.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return up, t


def test_reads_a_growing_file_to_its_exact_end(db):
    data = os.urandom(3 * 261120 + 5000)  # three full chunks and a short last one
    waits = []
    up, t = slow_writer(db, data, 64 * 1024, 0.03)
    src = GrowingDownload(db, "videos", up._id, on_wait=lambda: waits.append(1))
    assert not src.seekable()  # PyAV must never seek to the (unknown) end
    with pytest.raises(io.UnsupportedOperation):
        src.seek(0, io.SEEK_END)
    got = bytearray()
    while block := src.read(100_000):
        got += block
    t.join()
    assert bytes(got) == data
    assert src.length == len(data)
    assert waits, "the reader never had to wait: the test did not test growth"
    src.seek(10)  # our own callers go back to the head
    assert src.read(20) == data[10:30]
    assert src.tell() == 30


def test_an_upload_that_never_ends_is_left_to_on_wait(db):
    """The reader itself waits forever; its caller's on_wait decides to stop."""
    data = os.urandom(300_000)
    up, t = slow_writer(db, data, 300_000, 0.0, abort=True)
    t.join()

    class Gone(Exception):
        pass

    calls = []

    def on_wait():
        calls.append(1)
        if len(calls) > 3:
            raise Gone()

    src = GrowingDownload(db, "videos", up._id, on_wait=on_wait)
    with pytest.raises(Gone):
        src.read(10)


def test_a_complete_file_with_a_missing_chunk_is_corrupt(db):
    up = ChunkedUpload(db, "videos", "v.bin")
    up.write(os.urandom(3 * 261120))
    up.close()
    db["videos.chunks"].delete_one({"files_id": up._id, "n": 1})
    src = GrowingDownload(db, "videos", up._id)
    assert len(src.read(261120)) == 261120
    with pytest.raises(gridfs.errors.CorruptGridFile):
        src.read(10)


@pytest.mark.parametrize("name", ["fast.mp4", "a.mkv"])
def test_a_conversion_of_a_growing_file_equals_the_normal_one(db, tmp_path, name):
    """The same MP3, byte for byte, as converting the complete file."""
    path = make_media(tmp_path / name, video_codec="h264", duration=8.0, faststart=name.endswith("mp4"),
                      video_noise=40)
    data = Path(path).read_bytes()
    expected = mp3_bytes(io.BytesIO(data), filename=name, overlap=False)

    up, t = slow_writer(db, data, 32 * 1024, 0.01)
    waits = []
    with GrowingDownload(db, "videos", up._id, on_wait=lambda: waits.append(1)) as src:
        got = mp3_bytes(src, filename=name, overlap=True)
    t.join()
    assert waits, "the conversion never waited for the upload"
    assert got == expected
