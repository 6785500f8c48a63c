"""Two small thread helpers that let decoding, encoding and writing overlap.

LAME (both builds), FFmpeg's decoders and socket writes release the GIL, so a
conversion runs as three stages on up to two cores: decode+resample ahead of
the encoder (run_ahead), encode in the caller's thread, frame scanning, CRC and
dst.write behind it (WriteBehind). Queues are short, so memory stays bounded.
Errors raised in a helper thread are re-raised in the caller's thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()
_POLL_S = 0.1


def _put(q: queue.Queue, entry, stop: threading.Event) -> bool:
    """Put unless `stop` is set first (so a dead consumer never blocks us)."""
    while not stop.is_set():
        try:
            q.put(entry, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def run_ahead(items: Iterator[T], depth: int = 4) -> Iterator[T]:
    """Iterate `items` in a worker thread, at most `depth` items ahead.

    If the consumer stops early (an error, or close()), the worker is told to
    stop and is waited for, so nothing still touches the input afterwards.
    """
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if not _put(q, (item, None), stop):
                    return
            _put(q, (_END, None), stop)
        except BaseException as e:  # noqa: BLE001 - handed over, raised by the consumer
            _put(q, (None, e), stop)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name="transcode-read", daemon=True)
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


class WriteBehind:
    """Calls `write(data)` in a worker thread, in order, up to `depth` behind.

    close() waits for everything to be written and raises the first error;
    write() raises it too as soon as it is known.
    """

    def __init__(self, write: Callable[[bytes], object], depth: int = 8) -> None:
        self._write = write
        self._q: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="transcode-write", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if data and not _put(self._q, data, self._stop):
            raise self._error or RuntimeError("writer stopped")

    def close(self) -> None:
        """Flush and stop; raises the writer's error if it had one."""
        if self._thread.is_alive():
            _put(self._q, _END, self._stop)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop without waiting for pending writes (after another error)."""
        self._stop.set()
        self._thread.join()

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    data = self._q.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if data is _END:
                    return
                self._write(data)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            self._error = e
            self._stop.set()


class InlineWriter:
    """WriteBehind's interface, writing at once in the caller's thread."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self.write = write

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass
