"""The MP3 encoder: LAME 3.100, from the fastest build this machine has.

Two builds of the same LAME version, with the same settings and output layout
(bare MP3 frames, 576 samples of encoder delay):

* "system": Debian's libmp3lame0 (the library Debian's ffmpeg uses), called
  through ctypes with planar float samples, as ffmpeg feeds it. Measured here
  on 10 minutes of 48 kHz stereo: 3.0 s, against 3.45 s for the same library
  fed 16-bit interleaved samples and 3.6 s for lameenc. That margin is what
  lets a conversion keep up with the ffmpeg command line.
* "lameenc": the LAME bundled in the lameenc wheel from PyPI, which only
  takes 16-bit interleaved samples. Always there, so it is the fallback when
  the Debian package is not installed.

An encoder says which sample format it wants (`input_format`, a PyAV format
name) and encode() takes one bytes object per plane of that format. Both
release the GIL while encoding, so decoding can run meanwhile on another core.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Literal, Protocol

import lameenc

VBR_MTRH = 4  # LAME's default VBR algorithm (lame.h: vbr_mtrh)


class Encoder(Protocol):
    """What open_encoder() returns, whichever build it is."""

    def encode(self, planes: tuple[bytes, ...]) -> bytes: ...
    def flush(self) -> bytes: ...


class _SystemLame:
    """libmp3lame.so.0 through ctypes (only the calls we need)."""

    name = "system"
    input_format = "fltp"  # LAME's float path is the fastest (see above)
    _lib: ctypes.CDLL | Literal[False] | None = None  # None: not probed yet; False: unusable

    @classmethod
    def available(cls) -> bool:
        if cls._lib is None:
            path = ctypes.util.find_library("mp3lame") or "libmp3lame.so.0"
            try:
                lib = ctypes.CDLL(path)
                lib.lame_init.restype = ctypes.c_void_p
                lib.lame_encode_buffer_ieee_float.restype = ctypes.c_int
                lib.lame_encode_buffer_ieee_float.argtypes = (
                    ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                    ctypes.c_char_p, ctypes.c_int)
                lib.lame_encode_flush.restype = ctypes.c_int
            except (OSError, AttributeError):  # not installed, or older than LAME 3.99
                cls._lib = False
                return False
            cls._lib = lib
        return bool(cls._lib)

    def __init__(self, sample_rate: int, channels: int, bitrate_kbps: int,
                 vbr_quality: int | None, quality: int) -> None:
        lib = self._lib
        if not lib:
            raise RuntimeError("libmp3lame is not available (check available() first)")
        self._lame = lib
        self._gfp: ctypes.c_void_p | None = ctypes.c_void_p(lib.lame_init())
        if not self._gfp:
            raise MemoryError("lame_init failed")
        g = self._gfp
        lib.lame_set_num_channels(g, channels)
        lib.lame_set_in_samplerate(g, sample_rate)
        lib.lame_set_out_samplerate(g, sample_rate)
        lib.lame_set_quality(g, quality)
        lib.lame_set_bWriteVbrTag(g, 0)           # we write the info frame ourselves
        lib.lame_set_write_id3tag_automatic(g, 0)
        if vbr_quality is not None:
            lib.lame_set_VBR(g, VBR_MTRH)
            lib.lame_set_VBR_q(g, vbr_quality)
        else:
            lib.lame_set_brate(g, bitrate_kbps)
        if lib.lame_init_params(g) < 0:
            raise ValueError("LAME refused the settings")
        self._channels = channels
        self._out = ctypes.create_string_buffer(0)

    def encode(self, planes: tuple[bytes, ...]) -> bytes:
        """Float samples in -1..1, one plane per channel."""
        samples = len(planes[0]) // 4
        out = self._buffer(samples * 5 // 4 + 7200)  # LAME's documented worst case
        n = self._lame.lame_encode_buffer_ieee_float(
            self._gfp, planes[0], planes[-1], samples, out, len(out))  # mono: right is ignored
        if n < 0:
            raise RuntimeError(f"LAME encode failed ({n})")
        return out.raw[:n]

    def flush(self) -> bytes:
        out = self._buffer(7200 * 4)
        n = self._lame.lame_encode_flush(self._gfp, out, len(out))
        return out.raw[:max(n, 0)]

    def _buffer(self, size: int):
        if len(self._out) < size:
            self._out = ctypes.create_string_buffer(size)
        return self._out

    def __del__(self) -> None:
        if getattr(self, "_gfp", None):  # set only once self._lame is
            self._lame.lame_close(self._gfp)
            self._gfp = None


class _LameEnc:
    """LAME bundled in the lameenc wheel."""

    name = "lameenc"
    input_format = "s16"  # interleaved; the only thing lameenc takes

    @staticmethod
    def available() -> bool:
        return True

    def __init__(self, sample_rate: int, channels: int, bitrate_kbps: int,
                 vbr_quality: int | None, quality: int) -> None:
        enc = lameenc.Encoder()
        enc.silence()  # no banner on stdout
        enc.set_channels(channels)
        enc.set_in_sample_rate(sample_rate)
        # Without this LAME may pick a lower output rate by itself (e.g. for V9).
        enc.set_out_sample_rate(sample_rate)
        enc.set_quality(quality)
        if vbr_quality is not None:
            enc.set_vbr(VBR_MTRH)
            enc.set_vbr_quality(vbr_quality)
        else:
            enc.set_bit_rate(bitrate_kbps)
        self._enc = enc

    def encode(self, planes: tuple[bytes, ...]) -> bytes:
        return bytes(self._enc.encode(planes[0]))

    def flush(self) -> bytes:
        return bytes(self._enc.flush())


_BACKENDS: dict[str, type[_SystemLame] | type[_LameEnc]] = {"system": _SystemLame, "lameenc": _LameEnc}


def backend_name(preferred: str | None = None) -> str:
    """The build to encode with: `preferred` ("system" or "lameenc") if it is
    usable, else the fastest usable one."""
    preferred = preferred or "system"
    if preferred in _BACKENDS and _BACKENDS[preferred].available():
        return preferred
    return "lameenc"


def input_format(backend: str | None = None) -> str:
    """The PyAV sample format the encoders open_encoder(backend=...) makes take."""
    return _BACKENDS[backend_name(backend)].input_format


def open_encoder(sample_rate: int, channels: int, bitrate_kbps: int,
                 vbr_quality: int | None, quality: int, backend: str | None = None) -> Encoder:
    """An encoder of PCM at `sample_rate` (in its input_format) into MP3 frames."""
    cls = _BACKENDS[backend_name(backend)]
    return cls(sample_rate, channels, bitrate_kbps, vbr_quality, quality)
