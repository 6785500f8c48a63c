"""One track encoded by several LAME encoders at once, joined into one stream.

LAME is the converter's bottleneck (docs/architecture.md) and runs on one
core. SplitEncoder cuts the track into segments of SEGMENT_FRAMES MP3 frames
and gives each to an encoder of its own on a pool thread, so a conversion
uses every core while one user waits on it. Each encoder is also fed
PREROLL_FRAMES before its segment, so its state (filterbank, psychoacoustic
model, reservoir) matches a single encoder's by then, and WINDOW_FRAMES after
it, where the next segment takes over at a frame that converter/mp3join.py
shows a decoder cannot tell apart. The frame grid is the single encoder's, so
frame count, delay and padding are exactly the same as one encoder's.

Cost: each segment encodes PREROLL + WINDOW + LATENCY frames twice, about 5 %
more CPU. Memory: the PCM of at most `threads` + 1 segments (about 10 MB
each at 48 kHz stereo float), whatever the track's length.

Should no frame in the window qualify (not seen in practice: the window holds
32 frames and the first one usually does), the earlier encoder goes on through
the later segment's audio instead, and that segment's encoding is dropped:
slower, still one correct stream.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from video2mp3.converter import mp3join
from video2mp3.converter.lame import Encoder

SEGMENT_FRAMES = 1024  # ~25 s at 48 kHz: long enough that the overlaps cost little
PREROLL_FRAMES = 16    # measured: with 4, a join's error could double; with 16 it was a single encoder's
WINDOW_FRAMES = 32     # where to look for a join
LATENCY_FRAMES = 4     # LAME emits a frame a little after its input: enough fed to see the whole window
# Frames held back before a window: a join may copy up to 511 bytes of
# reservoir into them (at 8 kbps a frame holds ~50 bytes of data).
HOLD_FRAMES = 16
WRITE_AHEAD_BYTES = 64 * 1024  # written in pieces of about this size
MAX_QUEUED = 8         # PCM batches (~1 s of audio each) queued per encoder

Planes = tuple[bytes, ...]


def worth_splitting(declared_seconds: float | None, sample_rate: int, frame_samples: int) -> bool:
    """Whether a track may be longer than one segment (unknown length: it may):
    a shorter one is one encoder's work, and a pool would only cost."""
    return declared_seconds is None or declared_seconds * sample_rate > SEGMENT_FRAMES * frame_samples


class SerialEncoder:
    """SplitEncoder's interface with one encoder, in the caller's thread."""

    def __init__(self, encoder: Encoder, write: Callable[[bytes], object]) -> None:
        self._encoder = encoder
        self._write = write

    def encode(self, planes: Planes, samples: int) -> None:
        if samples:
            self._write(self._encoder.encode(planes))

    def finish(self) -> None:
        self._write(self._encoder.flush())

    def abort(self) -> None:
        pass


class _Segment:
    """An encoder's share: PCM from sample `first` (a frame boundary) up to
    `end`, fed by the caller's thread, encoded on a pool thread."""

    def __init__(self, number: int, first: int, end: int, frame_samples: int,
                 on_output: Callable[[_Segment], None]) -> None:
        self.number = number      # of the last segment length it covers (it may go on)
        self.joins_at = number * SEGMENT_FRAMES  # where its window with the previous one starts
        self.on_output = on_output
        self.first = first
        self.end = end            # or where the input ends, if sooner
        self.fed = first          # samples fed so far end here
        self.base_frame = first // frame_samples  # number of out's first frame in the track
        self.queue: deque[Planes] = deque()  # fed, not yet encoded
        # A segment holds at most its own length of PCM, so the decoder can run
        # a segment ahead and keep every encoder busy; one that goes on past
        # its length (one encoder, SplitEncoder.encode) queues MAX_QUEUED batches.
        self.bounded = False
        # Its window showed no frame to join at: the fallback needs all of its
        # PCM, so it must end at its own length.
        self.joinless = False
        # Encoded PCM, kept while a fallback may need it (_absorb) and the
        # segment is not yet the stream so far.
        self.keep = True
        self.kept: list[Planes] = []
        self.closed = False
        self.cancelled = False
        self.cond = threading.Condition()
        self.encoder: Encoder | None = None
        self.out = bytearray()
        self.error: BaseException | None = None
        self.done = threading.Event()

    def feed(self, planes: Planes, samples: int) -> None:
        """Queue PCM (for a bounded segment, once fewer than MAX_QUEUED
        batches wait: the decoder never runs far ahead of LAME)."""
        with self.cond:
            while self.bounded and len(self.queue) >= MAX_QUEUED and not self.done.is_set():
                self.cond.wait()
            if self.error is not None:
                raise self.error
            self.queue.append(planes)
            self.fed += samples
            self.cond.notify_all()

    def close(self, cancelled: bool = False) -> None:
        with self.cond:
            self.closed = True
            self.cancelled = self.cancelled or cancelled
            self.cond.notify_all()

    def stop_keeping(self) -> None:
        with self.cond:
            self.keep = False
            self.kept = []

    def run(self, encoder: Encoder) -> None:
        self.encoder = encoder
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.closed:
                        self.cond.wait()
                    if self.cancelled or not self.queue:
                        return
                    planes = self.queue.popleft()
                    if self.keep:
                        self.kept.append(planes)
                    self.cond.notify_all()
                self.out += encoder.encode(planes)
                self.on_output(self)
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
            self.error = e
        finally:
            with self.cond:
                self.done.set()
                self.cond.notify_all()

    def wait(self) -> None:
        self.done.wait()
        if self.error is not None:
            raise self.error


class SplitEncoder:
    """Feed PCM in track order with encode(); finish() writes the rest.

    open_encoder() makes a LAME encoder (converter/lame.py); frame_samples is
    its frame length, plane_unit the bytes per sample in each plane. write()
    gets the joined MP3 frames in order. split() is asked before each new
    segment: False keeps the current encoder going, so a worker can give the
    second core back when other work turns up.
    """

    def __init__(self, open_encoder: Callable[[], Encoder], frame_samples: int, plane_unit: int,
                 write: Callable[[bytes], object], threads: int,
                 split: Callable[[], bool] = lambda: True) -> None:
        self._open_encoder = open_encoder
        self._frame = frame_samples
        self._unit = plane_unit
        self._write = write
        self._threads = threads
        self._split = split
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="lame")
        # Output work (writing ahead, joining) happens on the caller's thread
        # and on the pool thread of the stream so far: one at a time.
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []  # not yet written; [0] is the stream so far
        self._pos = 0                        # samples fed
        self.joins = self.fallbacks = 0
        self._open(0)
        self._segments[0].stop_keeping()

    @property
    def held(self) -> int:
        """PCM batches held now, queued or kept (what bounds the memory)."""
        return sum(len(seg.queue) + len(seg.kept) for seg in self._segments)

    # --- feeding --------------------------------------------------------------

    def encode(self, planes: Planes, samples: int) -> None:
        start, end = self._pos, self._pos + samples
        self._pos = end
        while self._next_first() < end:
            last = self._segments[-1]
            if self._split() or last.joinless:
                self._open(last.number + 1)
            else:  # one encoder goes on, queueing a few batches at a time
                last.end += SEGMENT_FRAMES * self._frame
                last.number += 1
                last.bounded = True
        for seg in self._segments:
            if seg.closed or seg.fed >= end:
                continue
            lo = seg.fed - start
            hi = min(samples, seg.end - start)
            seg.feed(self._slice(planes, lo, hi), hi - lo)
            if seg.fed >= seg.end:
                seg.close()
        self._join_ready()

    def _next_first(self) -> int:
        """First sample of the segment after the last one."""
        return self._first_sample(self._segments[-1].number + 1)

    def _first_sample(self, number: int) -> int:
        """Where segment `number`'s input starts: its pre-roll before its own frames."""
        return max(0, number * SEGMENT_FRAMES - PREROLL_FRAMES) * self._frame

    def _open(self, number: int) -> None:
        # Bound memory and threads: the segment `threads` back must be
        # encoded before another one starts.
        if len(self._segments) >= self._threads:
            self._segments[-self._threads].wait()
            self._join_ready()
        end = ((number + 1) * SEGMENT_FRAMES + WINDOW_FRAMES + LATENCY_FRAMES) * self._frame
        seg = _Segment(number, self._first_sample(number), end, self._frame, self._output_ready)
        with self._lock:
            self._segments.append(seg)
        # Opened here, not on the pool: LAME fills its static tables on first use.
        self._pool.submit(seg.run, self._open_encoder())

    def _slice(self, planes: Planes, lo: int, hi: int) -> Planes:
        if lo == 0 and hi * self._unit >= len(planes[0]):
            return planes
        return tuple(p[lo * self._unit:hi * self._unit] for p in planes)

    # --- output -----------------------------------------------------------------

    def _output_ready(self, seg: _Segment) -> None:
        """On a pool thread, after each encode: the stream so far is written
        as it is made, so the file grows as it would with one encoder (a
        conversion of a file still arriving shows it), not a segment at a time."""
        with self._lock:
            if self._segments and self._segments[0] is seg:
                self._write_ahead(seg)

    def _write_ahead(self, a: _Segment) -> None:
        """Write `a` (the stream so far) up to shortly before the next
        segment's window: those frames are kept whatever the join."""
        can_go = (a.number + 1) * SEGMENT_FRAMES - HOLD_FRAMES - a.base_frame
        if can_go <= 0 or len(a.out) < WRITE_AHEAD_BYTES:
            return
        frames = mp3join.Frames(bytes(a.out))  # a snapshot: the pool thread only appends
        n = min(can_go, len(frames))
        if n:
            end = frames[n - 1].offset + frames[n - 1].length
            self._write(frames.buf[:end])
            del a.out[:end]
            a.base_frame += n

    def _join_ready(self, final: bool = False) -> None:
        """Join the stream so far with the next segment once the first is
        encoded and the next one's output shows where (final: wait for both)."""
        while len(self._segments) > 1:
            a, b = self._segments[0], self._segments[1]
            if final:
                b.wait()
            elif not a.done.is_set():
                return
            a.wait()  # not holding the lock: a pool thread may want it to finish
            with self._lock:
                if not self._try_join(a, b, b_done=b.done.is_set()):
                    return

    def _try_join(self, a: _Segment, b: _Segment, b_done: bool) -> bool:
        """Join a and b; False when that needs more of b's output first."""
        if b.error is not None:
            raise b.error
        a_frames, b_frames = mp3join.Frames(bytes(a.out)), mp3join.Frames(bytes(b.out))
        lo = b.joins_at
        j = mp3join.find_join(a_frames, a.base_frame, b_frames, b.base_frame, lo, lo + WINDOW_FRAMES)
        if j is None and not b_done:
            # b has not got that far yet, or the fallback needs all of it.
            b.joinless = len(b_frames) + b.base_frame >= lo + WINDOW_FRAMES
            return False
        if j is None:
            self._absorb(a, b)
        else:
            self._write(mp3join.splice(a_frames, j - a.base_frame, b_frames, j - b.base_frame))
            del b.out[:b_frames[j - b.base_frame].offset]  # b's thread only appends
            b.base_frame = j
            b.stop_keeping()  # the stream so far now: nothing falls back onto it
            a.encoder = None
            del self._segments[0]
            self.joins += 1
        self._write_ahead(self._segments[0])
        return True

    def _absorb(self, a: _Segment, b: _Segment) -> None:
        """No join: a's encoder goes on through b's audio; b's encoding is dropped."""
        skip = a.fed - b.first
        encoder = a.encoder
        assert encoder is not None, "a finished segment has its encoder"
        for planes in b.kept:
            n = len(planes[0]) // self._unit
            if skip < n:
                a.out += encoder.encode(self._slice(planes, max(skip, 0), n))
            skip -= n
        a.fed, a.end, a.number = b.fed, b.end, b.number
        del self._segments[1]
        self.fallbacks += 1

    # --- the end --------------------------------------------------------------

    def finish(self) -> None:
        try:
            for seg in self._segments:
                seg.close()
            self._join_ready(final=True)
            last = self._segments[0]
            last.wait()  # done: nothing else touches the output now
            assert last.encoder is not None, "a finished segment has its encoder"
            self._write(bytes(last.out) + last.encoder.flush())
            self._segments = []
        finally:
            self._pool.shutdown(wait=True)

    def abort(self) -> None:
        """Stop every encoder (after an error elsewhere) and wait for them."""
        for seg in self._segments:
            seg.close(cancelled=True)
        self._pool.shutdown(wait=True)
