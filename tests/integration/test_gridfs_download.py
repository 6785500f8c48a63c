"""storage.gridfs_download.ChunkedDownload (skipping, read-ahead) and
converter.video_source.VideoSource on the session's real SecantusDB.

Small GridFS chunks (16 KiB) make a few-MB file span many ranges, so seeks,
read-ahead and skipped chunks all happen with little data.
"""
from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from testkit.media import make_media, mp3_bytes
from video2mp3.converter.video_source import VideoSource
from video2mp3.media.v1 import media_pb2
from video2mp3.storage.gridfs_download import ChunkedDownload
from video2mp3.storage.gridfs_upload import ChunkedUpload
from video2mp3.storage.mongo import VIDEOS_BUCKET

CHUNK = 16 * 1024


@pytest.fixture(scope="module")
def db(mongo_server):
    with mongo_server.scratch("download") as m:
        yield m.db


def store(db, data: bytes, chunk_size: int = CHUNK):
    up = ChunkedUpload(db, VIDEOS_BUCKET, "f", chunk_size=chunk_size)
    for at in range(0, len(data), 1 << 20):
        up.write(data[at:at + (1 << 20)])
    up.close()
    return up._id


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def random_file(db):
    data = os.urandom(200 * CHUNK + 1234)  # 201 chunks, the last one short
    return data, store(db, data)


def zeroed_chunks(data: bytes, skip) -> bytes:
    """`data` with every chunk wholly inside `skip` read as zeros."""
    out = bytearray(data)
    for n in range(-(-len(data) // CHUNK)):
        start, end = n * CHUNK, min(len(data), (n + 1) * CHUNK)
        if any(s <= start and end <= e for s, e in skip):
            out[start:end] = bytes(end - start)
    return bytes(out)


SKIPS = [
    [],
    [(5 * CHUNK, 40 * CHUNK)],                          # whole chunks
    [(5 * CHUNK + 1, 40 * CHUNK - 1), (41 * CHUNK, 42 * CHUNK), (42 * CHUNK, 44 * CHUNK)],
    [(i * CHUNK, (i + 1) * CHUNK) for i in range(0, 201, 2)],  # every other chunk: $in queries
    [(190 * CHUNK, 10 ** 9)],                           # the tail, short last chunk included
]


@pytest.mark.parametrize("skip", SKIPS)
@pytest.mark.parametrize("read_ahead", [0, 2])
def test_random_reads_and_seeks_return_the_files_bytes(db, random_file, skip, read_ahead):
    data, fid = random_file
    expected = zeroed_chunks(data, skip)
    rng = random.Random(7)
    with ChunkedDownload(db, VIDEOS_BUCKET, fid, range_chunks=4, skip=skip, read_ahead=read_ahead) as dl:
        pos = 0
        for _ in range(300):
            if rng.random() < 0.15:  # a seek: anywhere, or a little back, or past the end
                pos = rng.choice([rng.randrange(len(data) + 100), max(0, pos - rng.randrange(3 * CHUNK))])
                assert dl.seek(pos) == pos
            size = rng.choice([1, 100, CHUNK - 1, CHUNK, 3 * CHUNK + 7, 20 * CHUNK])
            got = dl.read(size)
            assert got == expected[pos:pos + size], (pos, size)
            pos += len(got)
            assert dl.tell() == pos
        dl.seek(0)
        assert dl.read() == expected


@pytest.mark.parametrize("skip", SKIPS)
def test_sequential_read_fetches_each_needed_chunk_once(db, random_file, skip):
    data, fid = random_file
    zeroed = zeroed_chunks(data, skip)
    needed = sum(len(data[at:at + CHUNK]) for at in range(0, len(data), CHUNK)
                 if zeroed[at:at + CHUNK] == data[at:at + CHUNK])  # random data: no chunk is all zeros
    with ChunkedDownload(db, VIDEOS_BUCKET, fid, range_chunks=4, skip=skip, read_ahead=3) as dl:
        while dl.read(CHUNK // 3):
            pass
        assert dl.bytes_fetched == needed


def test_read_ahead_fetches_ahead_and_close_stops_it(db, random_file):
    data, fid = random_file
    dl = ChunkedDownload(db, VIDEOS_BUCKET, fid, range_chunks=4, read_ahead=2)
    helper = dl._helper
    assert helper is not None
    assert helper.is_alive()
    assert dl.read(4 * CHUNK) == data[:4 * CHUNK]
    assert dl.bytes_fetched == 4 * CHUNK
    assert dl.read(1) == data[4 * CHUNK:4 * CHUNK + 1]  # range 1: now reading is sequential
    wait_for(lambda: dl.bytes_fetched == 4 * 4 * CHUNK)  # ranges 2 and 3 came without being read
    dl.seek(100 * CHUNK)  # a jump: nothing is fetched ahead until reading goes on sequentially
    assert dl.read(1) == data[100 * CHUNK:100 * CHUNK + 1]
    time.sleep(0.2)
    assert dl.bytes_fetched == 5 * 4 * CHUNK
    dl.seek(4 * CHUNK + 10)  # and back (like a demuxer reading an index at the end): still there
    assert dl.read(10) == data[4 * CHUNK + 10:4 * CHUNK + 20]
    assert dl.bytes_fetched == 5 * 4 * CHUNK
    dl.close()
    helper.join(5)
    assert not helper.is_alive()
    assert dl.closed


def test_helper_failure_leaves_the_reader_to_fetch(db, random_file, monkeypatch):
    data, fid = random_file
    dl = ChunkedDownload(db, VIDEOS_BUCKET, fid, range_chunks=4, read_ahead=2)
    real = dl._fetch
    calls: list[int] = []
    data_read: list[bytes] = []

    def flaky(g):
        if threading.current_thread() is dl._helper:
            calls.append(g)
            raise RuntimeError("MongoDB went away")
        return real(g)

    monkeypatch.setattr(dl, "_fetch", flaky)
    with dl:
        while len(got := dl.read(CHUNK)) == CHUNK:
            data_read.append(got)
        data_read.append(got)
        assert b"".join(data_read) == data
    assert calls
    assert dl._helper is not None
    assert not dl._helper.is_alive()


def test_missing_chunk_is_reported(db):
    fid = store(db, os.urandom(10 * CHUNK))
    db[f"{VIDEOS_BUCKET}.chunks"].delete_one({"files_id": fid, "n": 6})
    with ChunkedDownload(db, VIDEOS_BUCKET, fid, range_chunks=4, read_ahead=2) as dl:
        assert len(dl.read(6 * CHUNK)) == 6 * CHUNK
        with pytest.raises(Exception, match=r"chunk 6 .* missing"):
            dl.read(CHUNK)


# --- a conversion from GridFS -----------------------------------------------------

@pytest.mark.parametrize(("name", "kw", "options"), [
    ("heavy.mp4", {}, {}),
    ("heavy.mov", {"n_audio_tracks": 2}, {"audio_track": 1}),
    ("faststart.mp4", {"faststart": True}, {}),
])
def test_conversion_fetches_less_and_gives_the_same_mp3(db, tmp_path, name, kw, options):
    # Big noisy frames, 5 fps: most 16 KiB chunks hold video only.
    path = make_media(tmp_path / name, video_codec="h264", video_size=(320, 240), video_noise=80,
                      fps=5, duration=3.0, **kw)
    data = Path(path).read_bytes()
    fid = store(db, data)
    opts = media_pb2.ConversionOptions(**options)
    results = {}
    for skip in (False, True):
        for read_ahead in (0, 2):
            with VideoSource(db, fid, skip=skip, read_ahead=read_ahead) as video:
                results[skip, read_ahead] = mp3_bytes(video.stream, opts), video.bytes_fetched, video.skip
    mp3s = {mp3 for mp3, _, _ in results.values()}
    assert len(mp3s) == 1, "skipping or reading ahead changed the MP3"
    plain, skipped = results[False, 0][1], results[True, 0][1]
    assert results[True, 0][2], "nothing was skipped"
    assert skipped < 0.6 * len(data), (skipped, len(data))
    assert skipped < 0.6 * plain, (skipped, plain)


def test_small_or_not_mp4_files_are_read_as_before(db, tmp_path):
    small = store(db, Path(make_media(tmp_path / "s.mp4", duration=1.0)).read_bytes())
    with VideoSource(db, small) as video:
        assert video.skip is None
        assert video.index_bytes == 0
    mkv = make_media(tmp_path / "big.mkv", video_codec="h264", video_size=(320, 240), video_noise=80, fps=5)
    fid = store(db, Path(mkv).read_bytes())
    with VideoSource(db, fid) as video:
        assert video.skip is None
        assert mp3_bytes(video.stream)


class _CutAfter:
    """A db whose `<bucket>.chunks` fails after `deletes` delete_many calls, as
    if the deleting process died or lost MongoDB mid-delete."""

    def __init__(self, db, deletes: int):
        self.db, self.left = db, deletes

    def __getitem__(self, name):
        coll = self.db[name]
        if not name.endswith(".chunks"):
            return coll
        outer = self

        class Chunks:
            def delete_many(self, query):
                if outer.left == 0:
                    raise ConnectionError("cut")
                outer.left -= 1
                return coll.delete_many(query)
        return Chunks()


@pytest.mark.parametrize("cut_after", [1, 2, 4])
def test_a_delete_cut_short_is_finished_by_the_next_one(db, cut_after):
    """delete_file removes the files document first: a retry no longer knows
    how many chunks there were and goes up from 0 to the first empty range.
    So the first delete goes top-down and what it leaves is always 0..k,
    which the retry finds (the retention sweep's retry of a converter killed
    while deleting a phone-sized video)."""
    from video2mp3.storage.gridfs_download import delete_file

    fid = store(db, os.urandom(300 * CHUNK))  # 300 chunks: five delete ranges of 64
    with pytest.raises(ConnectionError):
        delete_file(_CutAfter(db, cut_after), VIDEOS_BUCKET, fid)
    left = sorted(c["n"] for c in db[f"{VIDEOS_BUCKET}.chunks"].find({"files_id": fid}, {"n": 1}))
    assert left == list(range(len(left))), "what a cut-short delete leaves must start at chunk 0"
    assert db[f"{VIDEOS_BUCKET}.files"].find_one({"_id": fid}) is None
    assert delete_file(db, VIDEOS_BUCKET, fid) is False  # no files document any more
    assert db[f"{VIDEOS_BUCKET}.chunks"].count_documents({"files_id": fid}) == 0
