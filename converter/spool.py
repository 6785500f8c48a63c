"""Copying an upload to local disk as it arrives, when its file can only be read once complete.

An MP4 with its index (`moov`) at the end, as FFmpeg and most tools write
it, cannot be converted before its last bytes are in. Reading its GridFS
chunks back only then costs about as much as the conversion itself where
every chunk holds some audio (frame-interleaved files; docs/benchmarks.md,
bench-e2e). So the gateway publishes such a job at its first bytes, like a
streamable one, marked `spool` (gateway/early_jobs.py), and the worker that
takes it copies the growing file (storage/gridfs_growing.py) to a nameless
temporary file; once the upload is complete, it converts from that copy.
After the upload's answer only its last chunks and the conversion are left.

Such a worker mostly waits for bytes. Whenever it waits and another task
waits in its queue, it hands the job back (JobStore.yield_upload, policy
SpoolYielded): unpublished, for the upload's end to publish again, when it
is converted from GridFS as before. So a copy only ever takes a worker that
had nothing else to do. A copy is at most CONVERTER_SPOOL_MAX_MB and leaves
CONVERTER_SPOOL_RESERVE_MB free on its disk; where it would not, copying
stops (NoRoom) and the job is handed back too, or, if its upload has just
ended, converted from GridFS at once. The file has no name (unlinked as it
is made), so a killed worker leaves nothing on disk.

    with open_spool(directory) as copy:
        copy_upload(growing, copy, room=Room(directory, max_bytes, reserve_bytes), on_block=renew)
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from typing import BinaryIO, Protocol

BLOCK = 1024 * 1024      # bytes per read from the growing file
ROOM_EVERY = 16 * BLOCK  # the disk's free space is looked at this often


class Source(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class NoRoom(Exception):
    """The copy would pass CONVERTER_SPOOL_MAX_MB, or leave less than
    CONVERTER_SPOOL_RESERVE_MB free on its disk."""


class Room:
    """How much a copy may take: at most `max_bytes`, leaving `reserve_bytes`
    free on `directory`'s disk (looked at every ROOM_EVERY bytes)."""

    def __init__(self, directory: str, max_bytes: int, reserve_bytes: int):
        self.directory = directory or tempfile.gettempdir()
        self.max_bytes, self.reserve_bytes = max_bytes, reserve_bytes
        self._checked_at = -ROOM_EVERY

    def check(self, size: int) -> None:
        """Raises NoRoom if the copy may not grow to `size` bytes."""
        if size > self.max_bytes:
            raise NoRoom(f"the copy would pass {self.max_bytes} bytes")
        if size - self._checked_at >= ROOM_EVERY:
            self._checked_at = size
            if shutil.disk_usage(self.directory).free - ROOM_EVERY < self.reserve_bytes:
                raise NoRoom(f"{self.directory} has less than {self.reserve_bytes} bytes to spare")


def open_spool(directory: str) -> BinaryIO:
    """A nameless temporary file on `directory` (the system's if empty): gone when closed, or its process killed."""
    return tempfile.TemporaryFile(dir=directory or None, prefix="video2mp3-spool-")


def copy_upload(source: Source, copy: BinaryIO, *, room: Room, on_block: Callable[[], None]) -> int:
    """The whole of `source` (a growing file: its read() waits for bytes) into
    `copy`, rewound at the end; on_block() after each block. Returns the size."""
    size = 0
    while block := source.read(BLOCK):
        room.check(size + len(block))
        copy.write(block)
        size += len(block)
        on_block()
    copy.flush()
    copy.seek(0)
    return size
