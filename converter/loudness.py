"""Loudness normalisation (EBU R128 / ITU-R BS.1770): measure, then apply one gain.

Both steps are FFmpeg filters run through PyAV's filter graph, fed the PCM
the encoder gets (after resampling, downmixing and trimming), a batch at a
time, so memory does not grow with the audio's length:

* Meter: `ebur128` (K-weighting, 400 ms blocks every 100 ms, the -70 LUFS
  absolute and -10 LU relative gates; true peak from 4x oversampled audio)
  over the whole range, in a first pass that decodes the same audio again.
* Gain: `volume` by target - measured, so the MP3 is as loud as asked. When
  the true peak would then pass the ceiling (-1 dBTP), `alimiter` holds the
  sample peaks under it by the audio's own overshoot (how far its true peak
  lies above its sample peak, as measured) plus HEADROOM_DB, which the MP3's
  coding overshoot fits in; at least MIN_HEADROOM_DB under it. A limiter
  that has to take off a lot makes the result a little quieter than the
  target (docs/api.md, "Loudness"); capping the gain instead would miss the
  target by all of the missing headroom.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

import av
import av.filter

TRUE_PEAK_CEILING_DBTP = -1.0
HEADROOM_DB = 0.7       # under the ceiling, on top of the audio's own overshoot
MIN_HEADROOM_DB = 1.0   # the limiter's limit is at least this far under the ceiling
# ebur128 reports true peaks with 3 decimals (linear): the measured peak is
# taken as this much higher, so a peak rounded down never skips the limiter.
PEAK_ROUNDING = 0.0005

Planes = tuple[bytes, ...]


@dataclass(frozen=True)
class Measurement:
    integrated_lufs: float   # -inf: everything was below the absolute gate (silence)
    true_peak: float         # linear, 1.0 = 0 dBTP
    sample_peak: float = 0.0  # linear, 1.0 = 0 dBFS

    @property
    def true_peak_dbtp(self) -> float:
        return 20 * math.log10(self.true_peak) if self.true_peak > 0 else -math.inf


@dataclass(frozen=True)
class Plan:
    """What the encode pass applies."""

    gain_db: float
    limit_dbfs: float | None = None  # alimiter's sample-peak limit after the gain; None: no limiter

    @property
    def changes(self) -> bool:
        return self.gain_db != 0.0 or self.limit_dbfs is not None


def plan(measured: Measurement, target_lufs: float) -> Plan:
    """The gain that brings `measured` to `target_lufs`, and whether the
    limiter must hold its peaks. Silence (no block above the absolute gate)
    has no loudness to correct: it stays as it is."""
    if not math.isfinite(measured.integrated_lufs):
        return Plan(0.0)
    gain = target_lufs - measured.integrated_lufs
    peak_after = (measured.true_peak + PEAK_ROUNDING) * 10 ** (gain / 20)
    if peak_after <= 10 ** (TRUE_PEAK_CEILING_DBTP / 20):
        return Plan(gain)
    overshoot = 0.0
    if measured.sample_peak > 0 and measured.true_peak > measured.sample_peak:
        overshoot = 20 * math.log10(measured.true_peak / measured.sample_peak)
    return Plan(gain, TRUE_PEAK_CEILING_DBTP - max(MIN_HEADROOM_DB, overshoot + HEADROOM_DB))


def _frame(planes: Planes, samples: int, fmt: str, layout: str, rate: int, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame(format=fmt, layout=layout, samples=samples, align=1)
    for plane, data in zip(frame.planes, planes, strict=False):
        plane.update(data)
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    return frame


class _Graph:
    """abuffer -> filters -> abuffersink, fed PCM batches."""

    def __init__(self, fmt: str, rate: int, channels: int, filters: list[tuple[str, str]]) -> None:
        self.fmt, self.rate = fmt, rate
        self.layout = "mono" if channels == 1 else "stereo"
        self._graph = av.filter.Graph()
        node = self._graph.add_abuffer(format=fmt, sample_rate=rate, layout=self.layout,
                                       time_base=Fraction(1, rate))
        for name, args in filters:
            nxt = self._graph.add(name, args)
            node.link_to(nxt)
            node = nxt
        node.link_to(self._graph.add("abuffersink"))
        self._graph.configure()
        self._pts = 0

    def push(self, planes: Planes, samples: int) -> Iterator[av.AudioFrame]:
        if samples:
            self._graph.push(_frame(planes, samples, self.fmt, self.layout, self.rate, self._pts))
            self._pts += samples
        yield from self._pull()

    def close(self) -> Iterator[av.AudioFrame]:
        self._graph.push(None)
        yield from self._pull()

    def _pull(self) -> Iterator[av.AudioFrame]:
        while True:
            try:
                yield cast(av.AudioFrame, self._graph.pull())
            except (av.BlockingIOError, av.EOFError):
                return


class Meter:
    """Integrated loudness and true peak of PCM batches (planar float)."""

    def __init__(self, fmt: str, rate: int, channels: int) -> None:
        self._graph = _Graph(fmt, rate, channels, [("ebur128", "peak=sample+true:metadata=1")])
        self._last: dict[str, str] = {}

    def push(self, planes: Planes, samples: int) -> None:
        for frame in self._graph.push(planes, samples):
            self._last = frame.metadata or self._last

    def result(self) -> Measurement:
        for frame in self._graph.close():
            self._last = frame.metadata or self._last
        integrated = float(self._last.get("lavfi.r128.I", "-inf"))
        # ebur128 says -70 (its gate) when no block passed it
        if integrated <= -70.0:
            integrated = -math.inf
        return Measurement(integrated, float(self._last.get("lavfi.r128.true_peak", "0")),
                           float(self._last.get("lavfi.r128.sample_peak", "0")))


class Gain:
    """Applies a Plan to PCM batches in `in_fmt`, handing them over in `fmt`
    (the encoder's format, `unit` bytes per sample in each plane); the output
    has exactly as many samples (alimiter's delay compensated)."""

    def __init__(self, todo: Plan, in_fmt: str, fmt: str, rate: int, channels: int, unit: int) -> None:
        filters = [("volume", f"volume={todo.gain_db:.4f}dB:precision=float")]
        if todo.limit_dbfs is not None:
            limit = 10 ** (todo.limit_dbfs / 20)
            filters.append(("alimiter", f"limit={limit:.5f}:level=false:latency=true"))
        filters.append(("aformat", f"sample_fmts={fmt}"))
        self._graph = _Graph(in_fmt, rate, channels, filters)
        self._planes = channels if fmt.endswith("p") else 1
        self._unit = unit

    def apply(self, planes: Planes, samples: int) -> tuple[Planes, int]:
        return self._join(self._graph.push(planes, samples))

    def flush(self) -> tuple[Planes, int]:
        return self._join(self._graph.close())

    def _join(self, frames: Iterator[av.AudioFrame]) -> tuple[Planes, int]:
        parts: list[list[bytes]] = [[] for _ in range(self._planes)]
        count = 0
        for frame in frames:
            size = frame.samples * self._unit
            for i in range(self._planes):
                parts[i].append(bytes(memoryview(frame.planes[i])[:size]))
            count += frame.samples
        return tuple(b"".join(p) for p in parts), count
