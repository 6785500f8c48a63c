"""The video a conversion reads: its GridFS file, fetched only where the audio
may be and ahead of the decoder.

For an MP4/MOV, converter/mp4_index.py names the bytes that hold nothing but
video samples, and the download (storage/gridfs_download.ChunkedDownload)
never fetches the GridFS chunks wholly inside them: it reads zeros there.
Nothing that matters looks at those bytes. transcode() marks every stream but
the chosen audio one as discarded, so FFmpeg's mov demuxer seeks over their
samples instead of reading them, and only the audio stream's packets reach a
decoder (demux(stream)); the mov demuxer never parses sample payloads itself,
except those of timecode and chapter tracks, which are kept. The one reader of
video samples is avformat_find_stream_info while the file is opened: it may
decode a few video packets to learn that stream's own pixel format, which
zeros leave unknown, and nothing about the audio depends on it (the tests
check the MP3s are byte-identical with and without skipping).

A helper thread fetches the next ranges of chunks while the decoder and LAME
work (ChunkedDownload's read_ahead), so MongoDB round trips stop adding up.

    with VideoSource(db, file_id) as video:
        transcode(video.stream, ...)
    video.bytes_fetched   # what came over the wire, index included

A file still being uploaded is read front to back as it arrives instead
(growing=True, storage/gridfs_growing.py): no index, no skipping. A file
copied to local disk as it arrived (converter/spool.py) is read from that
copy (local=), which its owner closes.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from video2mp3.converter import mp4_index
from video2mp3.storage.gridfs_download import RANGE_CHUNKS, READ_AHEAD, ChunkedDownload, Range
from video2mp3.storage.gridfs_growing import GrowingDownload
from video2mp3.storage.mongo import VIDEOS_BUCKET


class VideoSource:
    """skip: False reads every byte (the old way); read_ahead: ranges fetched
    ahead (0: none); on_fetch(n): called with the bytes of every query.
    growing: the upload is still in progress: read it front to back as it
    arrives, calling on_wait() between looks (storage/gridfs_growing.py).
    local: a complete local copy to read instead (converter/spool.py)."""

    def __init__(self, db, file_id, *, skip: bool = True, read_ahead: int = READ_AHEAD,
                 on_fetch: Callable[[int], object] | None = None,
                 growing: bool = False, on_wait: Callable[[], None] | None = None,
                 local: BinaryIO | None = None) -> None:
        self.index_bytes = 0
        self.skip: list[Range] | None = None
        self.stream: ChunkedDownload | GrowingDownload | BinaryIO
        self._local = local is not None
        if local is not None:
            local.seek(0)
            self.stream = local
            return
        if growing:
            self.stream = GrowingDownload(db, VIDEOS_BUCKET, file_id, on_wait=on_wait, on_fetch=on_fetch)
            return
        if skip:
            self.skip, self.index_bytes = _skip_ranges(db, file_id, on_fetch)
        self.stream = ChunkedDownload(db, VIDEOS_BUCKET, file_id, skip=self.skip,
                                      read_ahead=read_ahead, on_fetch=on_fetch)

    @property
    def bytes_fetched(self) -> int:
        return self.index_bytes + getattr(self.stream, "bytes_fetched", 0)

    def close(self) -> None:
        if not self._local:
            self.stream.close()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _skip_ranges(db, file_id, on_fetch) -> tuple[list[Range] | None, int]:
    """The video-only byte ranges, read one chunk per query (the index needs
    the box headers and the moov, not ranges of 16 chunks), and what that
    fetched. Files of at most two ranges are read whole: little to save, and
    their first chunk would be fetched twice."""
    with ChunkedDownload(db, VIDEOS_BUCKET, file_id, range_chunks=1, on_fetch=on_fetch) as probe:
        if probe.length <= 2 * RANGE_CHUNKS * probe.chunk_size:
            return None, 0
        return mp4_index.skippable_ranges(probe), probe.bytes_fetched
