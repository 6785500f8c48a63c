"""Streams an MP3 file into a write-only, non-seekable sink.

Layout written: ID3v2 tag, a placeholder info frame (Xing/LAME), the audio
frames as they come. The info frame's real values (frame count, sizes, seek
table, delay/padding, CRCs) are only known at the end; since the sink cannot
seek, finish() returns them as a patch (offset, bytes) of the same length as
the placeholder, for the caller to overwrite in the stored file.
"""

from __future__ import annotations

import dataclasses

from video2mp3.converter import info_frame
from video2mp3.converter.info_frame import FrameScanner, InfoFrameParams, MusicCrc


class Mp3Output:
    def __init__(self, dst, id3: bytes, params: InfoFrameParams) -> None:
        self._dst = dst
        self._id3 = id3
        self._params = params
        self._pending: list[bytes] | None = []  # audio held until the first frame header is seen
        self.scanner = FrameScanner()
        self._crc = MusicCrc()
        self.info_size = 0
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        """Append MP3 audio frames (any split: frames may span calls)."""
        if not data:
            return
        self.scanner.feed(data)
        self._crc.update(data)
        if self._pending is None:
            self._emit(data)
            return
        self._pending.append(data)
        if self.scanner.first is not None:
            # The info frame copies the stream's header, so it waits for one.
            placeholder = info_frame.build_info_frame(self.scanner.first, self._params)
            self.info_size = len(placeholder)
            self._emit(self._id3 + placeholder)
            for piece in self._pending:
                self._emit(piece)
            self._pending = None

    def finish(self, delay: int, padding: int) -> tuple[int, bytes]:
        """The real info frame, as (offset in the file, bytes) to patch in."""
        scanner = self.scanner
        first = scanner.first
        assert first is not None, "finish() before any audio frame was written"
        # Copied streams say they are VBR only by their varying bitrates.
        vbr = self._params.vbr or scanner.min_kbps != scanner.max_kbps
        # The tag's bitrate byte: the real CBR bitrate (LAME may have lowered
        # the one asked for, e.g. for MPEG-2 rates), or the VBR minimum.
        kbps = scanner.min_kbps if vbr else first.bitrate_kbps
        params = dataclasses.replace(self._params, vbr=vbr, bitrate_kbps=kbps)
        frame = info_frame.build_info_frame(
            first, params,
            frames=scanner.frames,
            music_bytes=scanner.bytes,
            toc=info_frame.build_toc(scanner),
            delay=delay,
            padding=padding,
            music_crc=self._crc.digest(),
        )
        assert len(frame) == self.info_size, "info frame changed size"
        return len(self._id3), frame

    def _emit(self, data: bytes) -> None:
        self._dst.write(data)
        self.bytes_written += len(data)
