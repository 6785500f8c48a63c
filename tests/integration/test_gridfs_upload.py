"""storage/gridfs_upload.py and the janitor against SecantusDB: chunks stored as they fill, write-
behind, orphans removed."""
from __future__ import annotations

import datetime as dt
import os

import pymongo.errors
import pytest
from bson import ObjectId

from video2mp3.gateway.janitor import OrphanChunkJanitor
from video2mp3.storage.gridfs_upload import ChunkedUpload

MiB = 1024 * 1024


def test_chunked_upload_stores_each_chunk_when_full_and_reads_back_as_gridfs(mongo_server):
    """pymongo's own upload stream would hold up to 48 MB before writing."""
    with mongo_server.scratch("chunks") as m:
        chunks = m.db["videos.chunks"]
        data = os.urandom(3 * 261120 + 1234)
        up = ChunkedUpload(m.db, "videos", "a.mp4", metadata={"user_id": "u1"})
        up.write(data[:261120 + 10])
        assert chunks.count_documents({"files_id": up._id}) == 1   # stored as soon as full
        up.write(data[261120 + 10:])
        assert chunks.count_documents({"files_id": up._id}) == 3
        assert m.db["videos.files"].count_documents({"_id": up._id}) == 0
        up.close()
        assert m.videos.open_download_stream(up._id).read() == data
        f = next(m.videos.find({"_id": up._id}))
        assert (f.filename, f.length, f.metadata) == ("a.mp4", len(data), {"user_id": "u1"})

        gone = ChunkedUpload(m.db, "videos", "b.mp4")
        gone.write(data)
        gone.abort()
        assert chunks.count_documents({"files_id": gone._id}) == 0
        assert m.db["videos.files"].count_documents({"_id": gone._id}) == 0


def test_write_behind_stores_every_chunk_in_order_and_a_failed_store_raises_in_the_caller(mongo_server):
    """The gateway's mode: a writer thread, a few chunks per insert_many."""
    with mongo_server.scratch("behind") as m:
        chunks = m.db["videos.chunks"]
        data = os.urandom(40 * 261120 + 777)
        for step in (1000, 261120, 700_001, 3 * MiB):  # Envoy's and gRPC clients' message sizes
            up = ChunkedUpload(m.db, "videos", "a.mp4")
            up.write_behind(batch_bytes=4 * 261120)
            for i in range(0, len(data), step):
                up.write(data[i:i + step])
            up.close()
            assert [c["n"] for c in chunks.find({"files_id": up._id}, {"n": 1})] == list(range(41))
            assert m.videos.open_download_stream(up._id).read() == data

        class Refused(Exception):
            pass

        up = ChunkedUpload(m.db, "videos", "b.mp4")
        stored: list[int] = []

        def store(docs):  # the second insert fails, as a store going away would
            if stored:
                raise Refused()
            stored.append(len(docs))
            m.db["videos.chunks"].insert_many(docs)

        up._insert = store  # type: ignore[method-assign]
        up.write_behind(batch_bytes=2 * 261120)
        def write_all():
            for _ in range(40):
                up.write(data[:261120])
            up.close()

        with pytest.raises(Refused):
            write_all()
        up.abort()
        assert chunks.count_documents({"files_id": up._id}) == 0
        assert m.db["videos.files"].count_documents({"_id": up._id}) == 0
        assert m.db["videos.uploads"].count_documents({"_id": up._id}) == 0


def test_janitor_removes_only_old_orphan_chunks(mongo_server):
    """sweep() against real MongoDB with hand-made uploads last touched at known ages."""
    with mongo_server.scratch("janitor") as m:
        files, chunks = m.db["videos.files"], m.db["videos.chunks"]
        now = dt.datetime.now(dt.UTC)

        uploads = m.db["videos.uploads"]  # in-progress records (storage/gridfs_upload.py)

        def upload(fid, n_chunks: int, touched_age_s: float, data: bytes) -> None:
            for n in range(n_chunks):
                chunks.insert_one({"files_id": fid, "n": n, "data": data})
            uploads.insert_one({"_id": fid, "n": n_chunks - 1,
                                "touched": now - dt.timedelta(seconds=touched_age_s)})

        abandoned, active, complete, young = ObjectId(), ObjectId(), ObjectId(), ObjectId()
        upload(abandoned, 3, 7000, b"a")  # killed an hour and more ago
        upload(active, 2, 10, b"b")       # long upload, still writing
        upload(complete, 1, 7200, b"c")   # completed; its gateway died before dropping the record
        files.insert_one({"_id": complete, "length": 1, "chunkSize": 261120, "filename": "c"})
        upload(young, 1, 30, b"d")

        janitor = OrphanChunkJanitor(m.db, max_age_s=3600, interval_s=60)
        assert janitor.sweep(now) == 3
        left = {c["files_id"] for c in chunks.find()}
        assert left == {active, complete, young}
        assert chunks.count_documents({"files_id": active}) == 2
        assert janitor.sweep(now) == 0
        # An hour later the young one is abandoned too; the active one is
        # judged by its record's last refresh.
        later = now + dt.timedelta(seconds=3600 + 5)
        assert janitor.sweep(later) == 3
        assert {c["files_id"] for c in chunks.find()} == {complete}


def test_an_mp3_deleted_while_written_then_abandoned_is_removed_by_its_record(mongo_server, monkeypatch):
    """DeleteJob deletes a job's in-progress MP3 by id (ranged deletes) while its
    worker goes on writing, then the worker dies: the chunks it wrote after the
    delete sit past a gap. delete_file keeps the in-progress record, and the
    mp3s janitor deletes from 0 to past the record's count, across the gap."""
    import video2mp3.storage.gridfs_upload as gridfs_upload
    from video2mp3.storage.gridfs_download import RANGE_CHUNKS, delete_file

    with mongo_server.scratch("mp3janitor") as m:
        monkeypatch.setattr(gridfs_upload, "TOUCH_EVERY_S", 0.0)  # the record follows every chunk
        up = ChunkedUpload(m.db, "mp3s", "a.mp3", chunk_size=4)
        up.write(b"x" * 4 * (4 * RANGE_CHUNKS + 10))  # more than one delete range
        fid = up._id
        assert not delete_file(m.db, "mp3s", fid)  # in progress: no files document
        assert m.db["mp3s.chunks"].count_documents({"files_id": fid}) == 0
        assert m.db["mp3s.uploads"].count_documents({"_id": fid}) == 1  # kept for the writer
        monkeypatch.setattr(gridfs_upload, "TOUCH_EVERY_S", 3600.0)  # the writer dies before its next refresh
        up.write(b"y" * 4 * 3)  # stored after the delete, past the first ranges
        assert m.db["mp3s.chunks"].count_documents({"files_id": fid}) == 3
        janitor = OrphanChunkJanitor(m.db, max_age_s=60, interval_s=60, bucket="mp3s")
        assert janitor.sweep(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)) == 3
        assert m.db["mp3s.chunks"].count_documents({}) == 0
        assert m.db["mp3s.uploads"].count_documents({}) == 0


def test_an_upload_paused_and_resumed_by_other_writers_reads_back_whole(mongo_server):
    """The resumable (tus) mode: each request writes with its own ChunkedUpload,
    from the offset and tail the previous one left (gateway/tus.py); only full
    chunks are ever stored before the end, and the janitor's record is not kept."""
    with mongo_server.scratch("resume") as m:
        chunks = m.db["videos.chunks"]
        data = os.urandom(5 * 261120 + 4321)
        fid = ObjectId()
        offset, tail = 0, b""
        for end in (1000, 261120 + 7, 3 * 261120, 3 * 261120 + 5, len(data)):
            up = ChunkedUpload(m.db, "videos", "r.mp4", file_id=fid, offset=offset, tail=tail, track=False)
            up.write_behind(batch_bytes=2 * 261120)
            up.write(data[offset:end])
            if end == len(data):
                up.close()
                break
            up.pause()
            assert up.durable == up.stored == (end // 261120) * 261120
            offset, tail = up.length, up.tail
            assert offset == end
            assert len(tail) == end % 261120
            stored = list(chunks.find({"files_id": fid}))
            assert all(len(c["data"]) == 261120 for c in stored)
            assert len(stored) == end // 261120
        assert m.videos.open_download_stream(fid).read() == data
        assert m.db["videos.uploads"].count_documents({}) == 0
        with pytest.raises(ValueError, match="tail"):
            ChunkedUpload(m.db, "videos", "x", offset=10, tail=b"")


class _LostAfterStoring:
    """The chunks collection, but the first insert's answer is lost after the
    server stored it (what a connection cut at that moment looks like)."""

    def __init__(self, chunks):
        self.chunks, self.cut = chunks, False

    def insert_many(self, docs, ordered=True):
        return self._lose_first(self.chunks.insert_many(docs, ordered=ordered))

    def insert_one(self, doc):
        return self._lose_first(self.chunks.insert_one(doc))

    def _lose_first(self, result):
        if not self.cut:
            self.cut = True
            raise pymongo.errors.AutoReconnect("connection lost (test)")
        return result


def test_chunks_without_retryable_writes_survive_a_lost_answer_once(mongo_server):
    """Mongo.chunk_db has no retryable writes; the upload retries a lost insert
    itself, and the chunks the first try stored count as stored."""
    with mongo_server.scratch("chunks-noretry") as m:
        data = os.urandom(40 * 261120 + 77)
        up = ChunkedUpload(m.db, "videos", "a.mp4", chunk_db=m.chunk_db)
        up.write_behind()
        up._chunks = _LostAfterStoring(up._chunks)
        up.write(data)
        up.close()
        assert up._chunks.cut
        assert m.videos.open_download_stream(up._id).read() == data

