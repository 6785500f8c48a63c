"""core/background.py alone: the writer thread behind GridFS uploads and the
converter's output, and the reader thread ahead of its decoder."""
from __future__ import annotations

import threading
import time

import pytest

from video2mp3.core.background import InlineWriter, WriteBehind, run_ahead


def test_write_behind_stores_in_order_in_batches():
    stored: list[list[int]] = []
    gate = threading.Event()

    def store(items):
        gate.wait(5)
        stored.append(items)

    writer = WriteBehind(store, batch=3, limit=10)
    for i in range(1, 8):
        writer.write(i)
    gate.set()
    writer.close()
    assert [i for batch in stored for i in batch] == list(range(1, 8))
    assert max(len(b) for b in stored) <= 3
    assert len(stored) < 7  # what waited went in groups


def test_write_behind_raises_the_stores_error_in_the_caller():
    class Refused(Exception):
        pass

    def store(items):
        raise Refused()

    def write_on():
        for _ in range(1000):
            writer.write(b"b")
            time.sleep(0.001)

    writer = WriteBehind(store)
    writer.write(b"a")
    with pytest.raises(Refused):
        write_on()  # raised by a write() once the writer met it
    with pytest.raises(Refused):
        writer.close()


def test_write_behind_blocks_at_its_limit():
    gate = threading.Event()
    writer: WriteBehind[int] = WriteBehind(lambda items: gate.wait(5), limit=2)
    writer.write(1)  # taken by the writer, which waits at the gate
    time.sleep(0.05)
    writer.write(2)
    writer.write(3)
    third = threading.Thread(target=writer.write, args=(4,))
    third.start()
    third.join(0.2)
    assert third.is_alive()  # two wait: the next write waits for room
    gate.set()
    third.join(5)
    writer.close()


def test_abort_stores_nothing_more_and_stops_the_thread():
    stored = []
    gate = threading.Event()

    def store(items):
        gate.wait(5)
        stored.extend(items)

    writer = WriteBehind(store)
    for i in range(5):
        writer.write(i)
    time.sleep(0.05)
    threading.Timer(0.1, gate.set).start()  # the store in progress ends while abort() waits for it
    writer.abort()
    assert stored == [0]  # the store in progress, nothing after it
    assert not writer._thread.is_alive()
    with pytest.raises(RuntimeError):
        writer.write(9)


def test_inline_writer_stores_at_once():
    stored: list[bytes] = []
    inline = InlineWriter(stored.extend)
    inline.write(b"y")
    assert stored == [b"y"]
    inline.close()


def test_run_ahead_hands_over_items_and_errors():
    assert list(run_ahead(iter(range(100)), depth=2)) == list(range(100))

    def failing():
        yield 1
        raise KeyError("decoder")

    seen: list[int] = []
    with pytest.raises(KeyError):
        seen.extend(run_ahead(failing()))
    assert seen == [1]


def test_run_ahead_stops_its_thread_when_the_consumer_does():
    before = threading.active_count()
    closed = threading.Event()

    def endless():
        try:
            while True:
                yield 0
        finally:
            closed.set()

    items = run_ahead(endless())
    next(items)
    items.close()
    assert closed.is_set()
    assert threading.active_count() == before


def test_flush_waits_for_what_was_written_and_the_writer_goes_on():
    stored: list[int] = []
    gate = threading.Event()

    def store(items):
        gate.wait(5)
        stored.extend(items)

    writer = WriteBehind(store, batch=2)
    for i in range(5):
        writer.write(i)
    threading.Timer(0.1, gate.set).start()
    writer.flush()
    assert stored == [0, 1, 2, 3, 4]
    writer.write(5)
    writer.close()
    assert stored == [0, 1, 2, 3, 4, 5]
