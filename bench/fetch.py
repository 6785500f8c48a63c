"""What a conversion fetches from GridFS, and how long it takes, with and
without skipping video data and reading ahead.

    python -m bench.fetch VIDEO.mp4 ... [--modes plain,ahead,skip,skip+ahead] [--runs 1]

Starts a SecantusDB of its own (on disk, in a temporary directory, stopped at
the end), stores each file with 255 KiB chunks as the gateway does, then
converts it as the converter does (VideoSource -> transcode, default options)
once per mode and run, alternating modes. Prints one JSON line per conversion
and a summary per file: the file's size, its 255 KiB chunks, how many hold
any audio (or other kept) bytes, the bytes fetched, the seconds and how many of
them the decoder waited for MongoDB, per mode.
"""
from __future__ import annotations

import argparse
import bisect
import json
import sys
import tempfile
import time
from pathlib import Path

from gridfs import DEFAULT_CHUNK_SIZE

from localmesh.processes import Child, free_port, secantusd_argv, wait_for_mongo
from testkit.testbed import mongo_uri
from video2mp3.converter import mp4_index
from video2mp3.converter.transcode import transcode
from video2mp3.converter.video_source import VideoSource
from video2mp3.core.settings import MongoSettings
from video2mp3.media.v1 import media_pb2
from video2mp3.storage.gridfs_download import READ_AHEAD, ChunkedDownload
from video2mp3.storage.gridfs_upload import ChunkedUpload
from video2mp3.storage.mongo import VIDEOS_BUCKET, Mongo

MODES = {"plain": (False, 0), "ahead": (False, READ_AHEAD), "skip": (True, 0), "skip+ahead": (True, READ_AHEAD)}


class CountingSink:
    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)


def fetched_bytes(db, file_id, *, skip: bool = True, read_ahead: int = READ_AHEAD, options=None) -> dict:
    """Convert a stored video as the converter does; bytes fetched and seconds."""
    started = time.monotonic()
    with VideoSource(db, file_id, skip=skip, read_ahead=read_ahead) as video:
        assert isinstance(video.stream, ChunkedDownload)  # a stored video, not a growing upload
        result = transcode(video.stream, CountingSink(), options or media_pb2.ConversionOptions())
    return {"fetched": video.bytes_fetched, "index_bytes": video.index_bytes,
            "seconds": round(time.monotonic() - started, 3), "waited_s": round(video.stream.wait_seconds, 3),
            "audio_seconds": round(result.duration_seconds, 2)}


def chunks_with_audio(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[int, int] | None:
    """(chunks, chunks holding any byte that is not video-only) of a file."""
    with open(path, "rb") as f:
        skip = mp4_index.skippable_ranges(f)
        size = f.seek(0, 2)
    count = -(-size // chunk_size)
    if skip is None:
        return None
    video_only = 0
    for n in range(count):
        start, end = n * chunk_size, min(size, (n + 1) * chunk_size)
        i = bisect.bisect_right(skip, (start, float("inf"))) - 1
        video_only += i >= 0 and skip[i][0] <= start and end <= skip[i][1]
    return count, count - video_only


def store(db, path: Path):
    up = ChunkedUpload(db, VIDEOS_BUCKET, path.name)
    with open(path, "rb") as f:
        while data := f.read(4 << 20):
            up.write(data)
    up.close()
    return up._id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        port = free_port()
        child = Child("mongo", secantusd_argv(port, Path(tmp) / "db"), cwd=tmp,
                      log_path=Path(tmp) / "mongo.log").start()
        try:
            wait_for_mongo(mongo_uri("127.0.0.1", port, "admin"), timeout=60, child=child)
            mongo = Mongo(MongoSettings(uri=mongo_uri("127.0.0.1", port, "bench"), timeout_ms=30000))
            for path in args.videos:
                started = time.monotonic()
                fid = store(mongo.db, path)
                print(f"# {path.name}: stored in {time.monotonic() - started:.1f}s", file=sys.stderr)
                summary: dict = {"file": path.name, "size": path.stat().st_size,
                                 "chunks_total_with_audio": chunks_with_audio(path)}
                for run in range(args.runs):
                    for mode in modes:
                        skip, ahead = MODES[mode]
                        row = {"file": path.name, "mode": mode, "run": run,
                               **fetched_bytes(mongo.db, fid, skip=skip, read_ahead=ahead)}
                        print(json.dumps(row), flush=True)
                        summary.setdefault(mode, []).append([row["fetched"], row["seconds"], row["waited_s"]])
                print(json.dumps(summary), flush=True)
                mongo.videos.delete(fid)
            mongo.close()
        finally:
            child.stop(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
