"""Work on a helper thread, ahead of the caller or behind it.

    run_ahead(items)              iterate `items` on a helper thread, a few ahead of the caller
    WriteBehind(store, ...)       store what the caller writes on a writer thread, in order
    InlineWriter(store)           WriteBehind's interface, storing at once in the caller's thread

What runs on the helper thread must release the GIL for this to pay: socket
I/O (GridFS uploads, storage/gridfs_upload.py), FFmpeg's decoders, LAME
(converter/transcode.py). Queues are short, so memory stays bounded; an error
met on a helper thread is raised in the caller's.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()
_POLL_S = 0.1


def run_ahead(items: Iterator[T], depth: int = 4, name: str = "read-ahead") -> Generator[T, None, None]:
    """Iterate `items` in a helper thread, at most `depth` items ahead.

    If the consumer stops early (an error, or close()), the helper is told to
    stop and is waited for, so nothing still touches the input afterwards.
    """
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(entry) -> bool:
        """Put unless `stop` is set first (so a consumer gone never blocks us)."""
        while not stop.is_set():
            try:
                q.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as e:  # noqa: BLE001 - handed over, raised by the consumer
            put((None, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item, error = q.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        worker.join()


class WriteBehind(Generic[T]):
    """Calls store(items) on a writer thread, in the order they were written.

    Whenever the writer is free it takes every item waiting, `batch` at most,
    and stores them with one call (group commit; batch=1: one by one).
    write() blocks while `limit` items wait. After a failure nothing more is
    stored, and write(), flush() and close() raise it.
    """

    def __init__(self, store: Callable[[list[T]], object], *, batch: int = 1, limit: int = 8,
                 name: str = "write-behind") -> None:
        self._store = store
        self._batch, self._limit = max(1, batch), max(batch, limit)
        self._waiting: list[T] = []
        self._cond = threading.Condition()
        self._closing = False     # no more items: store what waits, then stop
        self._cancelled = False   # store nothing more
        self._error: BaseException | None = None
        self._busy = False        # a batch is being stored
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def write(self, item: T) -> None:
        """Queue `item` for storing."""
        with self._cond:
            while len(self._waiting) >= self._limit and self._error is None and not self._closing:
                self._cond.wait()
            self._raise()
            if self._closing:
                raise RuntimeError("writer stopped")
            self._waiting.append(item)
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until everything written so far is stored, the writer staying
        on; raise its failure if any."""
        with self._cond:
            while (self._waiting or self._busy) and self._error is None:
                self._cond.wait()
            self._raise()

    def close(self) -> None:
        """Wait until everything written is stored; raise the writer's failure if any."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Store nothing more (after another error); returns once the store in
        progress, if any, is done."""
        with self._cond:
            self._cancelled = self._closing = True
            self._waiting.clear()
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if not self._waiting or self._cancelled or self._error is not None:
                    return
                take, self._waiting = self._waiting[:self._batch], self._waiting[self._batch:]
                self._busy = True
                self._cond.notify_all()  # room for write()
            try:
                self._store(take)
            except BaseException as e:  # noqa: BLE001 - raised in the writing thread
                with self._cond:
                    self._error = e
                    self._busy = False
                    self._waiting.clear()
                    self._cond.notify_all()
                return
            with self._cond:
                self._busy = False
                self._cond.notify_all()  # flush()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


class InlineWriter(Generic[T]):
    """WriteBehind's interface, storing each item at once in the caller's thread."""

    def __init__(self, store: Callable[[list[T]], object]) -> None:
        self._store = store

    def write(self, item: T) -> None:
        self._store([item])

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass
