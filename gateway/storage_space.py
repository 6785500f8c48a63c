"""Refuse uploads before the store's disk fills, instead of after.

A store whose disk fills mid-write does not fail that write cleanly:
WiredTiger (in SecantusDB, and in mongod) panics on ENOSPC and the server
must be restarted, with its disk still full. So the gateway keeps a reserve:
an upload is refused (StorageFull: RESOURCE_EXHAUSTED, reason STORAGE_FULL,
REST 507 through the `x-http-status` trailer) when the free space of
the store's filesystem falls below `reserve_bytes`, checked when it starts
and every few chunks while it is written; the aborted upload deletes its
chunks (ranged deletes write little).

Free space comes from the store's data folder when it is on this machine
(MONGO_DATA_DIR, set by `make run` for its embedded store), else from the
server's dbStats (fsTotalSize - fsUsedSize, MongoDB >= 4.4), else it is not
checked. Every byte uploaded costs ~2 bytes of disk for a while (the document,
and its journal record until a checkpoint; ~4 on a store that also keeps an
oplog, a replica set's), so the reserve must cover ~4 x what all concurrent
uploads write between two checks, plus checkpoints: the default 512 MB is
generous for 8 uploads checked every 4 MB.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable

from video2mp3.core.errors import Reason, ResourceExhausted

log = logging.getLogger(__name__)

CHECK_EVERY_BYTES = 4 * 1024 * 1024
DBSTATS_TTL_S = 1.0


class StorageFull(ResourceExhausted):
    """The store's disk is (nearly) full: RESOURCE_EXHAUSTED over gRPC, and
    507 Insufficient Storage over REST (deploy/envoy.yaml's Lua filter reads
    the `x-http-status` trailer)."""

    def __init__(self, message: str, *, free_bytes: int, reserve_bytes: int):
        super().__init__(message, reason=Reason.STORAGE_FULL,
                         metadata={"free_bytes": str(free_bytes), "reserve_bytes": str(reserve_bytes)},
                         trailers=[("x-http-status", "507")])


class StorageSpace:
    def __init__(self, db, *, data_dir: str | os.PathLike | None, reserve_bytes: int):
        self.db = db
        self.data_dir = str(data_dir) if data_dir else None
        self.reserve_bytes = reserve_bytes
        self._lock = threading.Lock()
        self._cached: tuple[float, int | None] = (0.0, None)
        self._no_dbstats = False

    def free_bytes(self) -> int | None:
        """Free bytes on the store's filesystem, or None if unknown."""
        if self.data_dir and os.path.isdir(self.data_dir):
            return shutil.disk_usage(self.data_dir).free
        if self._no_dbstats or self.db is None:
            return None
        with self._lock:
            at, value = self._cached
            if time.monotonic() - at < DBSTATS_TTL_S:
                return value
            stats = self.db.command("dbStats")
            total, used = stats.get("fsTotalSize"), stats.get("fsUsedSize")
            if total is None or used is None:
                self._no_dbstats = True  # this server does not say; never ask again
                return None
            value = int(total) - int(used)
            self._cached = (time.monotonic(), value)
            return value

    def check(self) -> None:
        """Raise StorageFull if less than the reserve is free."""
        if self.reserve_bytes <= 0:
            return
        free = self.free_bytes()
        if free is not None and free < self.reserve_bytes:
            log.warning("upload refused: %d MB free, %d MB kept in reserve",
                        free // 2**20, self.reserve_bytes // 2**20)
            raise StorageFull(
                f"video storage is full ({free // 2**20} MB free, {self.reserve_bytes // 2**20} MB "
                "kept in reserve); try again once space is freed",
                free_bytes=free, reserve_bytes=self.reserve_bytes)

    def guard(self) -> Callable[[int], None]:
        """A per-upload callable for ChunkedUpload: checks now, then about every
        CHECK_EVERY_BYTES it is told were written."""
        self.check()
        pending = 0

        def wrote(n: int) -> None:
            nonlocal pending
            pending += n
            if pending >= CHECK_EVERY_BYTES:
                pending = 0
                self.check()

        return wrote
