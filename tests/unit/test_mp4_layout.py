"""testkit/mp4_layout.py: the phone layout `make bench-e2e` measures must be
the same media, only laid out differently."""
from __future__ import annotations

import itertools
import struct
from pathlib import Path

import av
import numpy as np
import pytest

from testkit.media import decode_audio, make_media
from testkit.mp4_layout import interleave


def top_level(path) -> list[bytes]:
    kinds, data, pos = [], Path(path).read_bytes(), 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        kinds.append(kind)
        pos += size
    return kinds


def _file_position(p: av.Packet) -> int:
    assert p.pos is not None  # every packet read from a file has its byte position
    return p.pos


@pytest.mark.parametrize("index_first", [False, True])
def test_relaid_file_has_the_same_audio_and_video(tmp_path, index_first):
    src = make_media(tmp_path / "src.mp4", duration=4.0, n_audio_tracks=2, track_freqs=[440, 660])
    dst = interleave(src, tmp_path / "dst.mp4", seconds=1.0, index_first=index_first)
    kinds = top_level(dst)
    assert kinds.index(b"moov") < kinds.index(b"mdat") if index_first else kinds[-1] == b"moov"
    for track in (0, 1):
        a, rate_a, ch_a = decode_audio(src, track)
        b, rate_b, ch_b = decode_audio(dst, track)
        assert (rate_a, ch_a) == (rate_b, ch_b)
        assert np.array_equal(a, b)
    with av.open(str(src)) as src_c, av.open(str(dst)) as dst_c:
        frames_a = [f.to_ndarray() for f in src_c.decode(video=0)]
        frames_b = [f.to_ndarray() for f in dst_c.decode(video=0)]
    assert len(frames_a) == len(frames_b)
    assert all(np.array_equal(x, y) for x, y in zip(frames_a, frames_b, strict=True))


def test_one_chunk_per_track_per_second(tmp_path):
    src = make_media(tmp_path / "src.mp4", duration=3.0)
    dst = interleave(src, tmp_path / "dst.mp4", seconds=1.0)
    with av.open(str(dst)) as c:
        in_file_order = [p.stream.type for p in sorted((p for p in c.demux() if p.size), key=_file_position)]
    # In file order the track changes once per chunk: 3 s x 2 tracks at most
    # (FFmpeg's own muxer alternates every few packets).
    changes = sum(1 for x, y in itertools.pairwise(in_file_order) if x != y)
    assert 2 <= changes <= 2 * 3
