"""`make run`'s embedded SecantusDB: `secantusd-py`, plus a thread that gives
the space of deleted videos back to the disk.

    python localmesh/secantusd.py [--compact-every S] <secantusd-py's arguments>

SecantusDB keeps the documents of every collection in 16 shared WiredTiger
files (by a hash of the collection's name), and has no `compact` command.
WiredTiger reuses the pages of deleted documents for later writes, but its
files never shrink, so the data folder stays at the high-water mark of what
was ever stored at once: three phone videos uploaded together leave 4.4 GB
behind them for good. Dropping collections would not help either, as rows of
the shared files are all a drop deletes. So every S seconds this runs
WiredTiger's own online compaction on each of the store's files: it moves the
pages near a file's end into the free space before them and cuts the end
off, while the store goes on serving (docs/operations.md, "Big files").

A script, not a module of the package: localmesh/processes.py runs it with
the store's folder as its working directory, and it needs nothing but
SecantusDB. It reaches WiredTiger through the server's `storage._conn`,
which SecantusDB does not document; the version is pinned in requirements/,
and tests/integration/test_store_bounded.py fails if that changes under it.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from typing import Any

import wiredtiger
from secantus import cli
from secantus.server import SecantusDBServer

log = logging.getLogger("localmesh.secantusd")

# WiredTiger gives up compacting a file after this long (ETIMEDOUT, what it
# moved stays moved), so stopping the store never waits longer. It leaves a
# file alone when little of it is free: a round with nothing to win took
# 0.4-1 s over 0.8 GB stored (mostly the checkpoints compaction makes).
COMPACT_CONFIG = "timeout=10"


class Compactor:
    """Compacts every table of `storage` every `every_s` seconds, on its own thread."""

    def __init__(self, storage: Any, every_s: float):
        self.storage = storage
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="compact", daemon=True)

    def start(self) -> Compactor:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Before the store closes: no compaction may outlive its WiredTiger connection."""
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.compact_once()
            except Exception:  # the store goes on; the next round retries
                log.exception("compaction failed")

    def tables(self) -> list[str]:
        home = self.storage.home_path
        return sorted(f"table:{name[:-3]}" for name in os.listdir(home)
                      if name.startswith("secantus_") and name.endswith(".wt"))

    def compact_once(self) -> int:
        """One round over every table; the bytes given back to the disk."""
        before = folder_size(self.storage.home_path)
        session = self.storage._conn.open_session()
        try:
            for uri in self.tables():
                if self._stop.is_set():
                    break
                try:
                    session.compact(uri, COMPACT_CONFIG)
                except wiredtiger.WiredTigerError as e:  # busy, timed out, dropped meanwhile
                    log.info("compact %s: %s", uri, e)
        finally:
            session.close()
        freed = before - folder_size(self.storage.home_path)
        if freed > 0:
            log.info("compaction gave %d MB back to the disk", freed // 2**20)
        return freed


def folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
               if os.path.isfile(os.path.join(path, f)))


def server_class(compact_every_s: float) -> type[SecantusDBServer]:
    """SecantusDB's server, compacting its files every `compact_every_s` (0: never)."""

    class CompactingServer(SecantusDBServer):
        compactor: Compactor | None = None

        def start(self) -> None:
            super().start()
            if compact_every_s > 0 and not self.storage.in_memory:
                self.compactor = Compactor(self.storage, compact_every_s).start()

        def stop(self) -> None:
            if self.compactor is not None:
                self.compactor.stop()
            super().stop()

    return CompactingServer


def main(argv: list[str]) -> int:
    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument("--compact-every", type=float, default=0.0, metavar="S")
    args, rest = ours.parse_known_args(argv)
    # secantusd-py itself (secantus.cli.main), with our server in its place.
    cli.SecantusDBServer = server_class(args.compact_every)
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
