"""converter/spool.py's copy and its room, and when the gateway starts an upload's job early
(gateway/uploads._EarlyStart): the pure parts of copying an upload as it arrives."""
from __future__ import annotations

import io
import os
import struct

import pytest

from testkit.media import make_media
from video2mp3.converter import spool
from video2mp3.gateway.uploads import _EarlyStart


def test_a_copy_is_whole_rewound_and_reported_block_by_block(tmp_path):
    data = os.urandom(3 * spool.BLOCK + 123)
    blocks = []
    with spool.open_spool(str(tmp_path)) as copy:
        size = spool.copy_upload(io.BytesIO(data), copy, room=spool.Room(str(tmp_path), len(data), 0),
                                 on_block=lambda: blocks.append(1))
        assert size == len(data)
        assert copy.read() == data
    assert len(blocks) == 4
    assert list(tmp_path.iterdir()) == []  # nameless: nothing to clean up


def test_a_copy_over_its_maximum_stops():
    data = os.urandom(2 * spool.BLOCK + 1)
    with spool.open_spool("") as copy, pytest.raises(spool.NoRoom, match="would pass"):
        spool.copy_upload(io.BytesIO(data), copy, room=spool.Room("", 2 * spool.BLOCK, 0), on_block=lambda: None)


def test_a_copy_leaves_the_reserve_free(tmp_path):
    # More than the disk has: the first block is refused.
    room = spool.Room(str(tmp_path), 1 << 40, reserve_bytes=1 << 60)
    with pytest.raises(spool.NoRoom, match="to spare"):
        room.check(spool.BLOCK)


def head_of(path, n: int = 64 * 1024) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def feed_all(start: _EarlyStart, data: bytes, piece: int) -> list[tuple[int, bool]]:
    """Where (bytes so far) and how the job is started, feeding `data` in pieces."""
    said = []
    for i in range(0, len(data), piece):
        chunk = data[i:i + piece]
        spool_it = start.feed(chunk, i + len(chunk))
        if spool_it is not None:
            said.append((i + len(chunk), spool_it))
    return said


def test_an_index_at_the_end_mp4_gets_its_job_once_past_the_threshold(tmp_path):
    path = make_media(tmp_path / "slow.mp4", video_codec="h264", duration=2.0)
    data = head_of(path) + b"\x00" * 300_000  # as if more mdat followed
    assert feed_all(_EarlyStart(spool_after=200_000), data, 1000) == [(200_000, True)]
    assert feed_all(_EarlyStart(spool_after=10**9), data, 1000) == []


def test_a_streamable_upload_gets_its_job_at_once_and_others_never(tmp_path):
    fast = head_of(make_media(tmp_path / "fast.mp4", video_codec="h264", duration=2.0, faststart=True))
    said = feed_all(_EarlyStart(spool_after=1), fast, 100)
    assert len(said) == 1
    assert said[0][1] is False
    avi = head_of(make_media(tmp_path / "a.avi", duration=2.0))
    assert feed_all(_EarlyStart(spool_after=1), avi, 100) == []
    # An undecidable head (a box bigger than what is sniffed) is never started, whatever follows.
    ftyp = struct.pack(">I4s", 32, b"ftyp") + b"\x00" * 24
    undecided = ftyp + struct.pack(">I4s", 1 << 20, b"free") + b"\x00" * (200 * 1024)
    assert feed_all(_EarlyStart(spool_after=1), undecided, 4096) == []


def test_no_early_job_when_copies_are_off(tmp_path):
    path = make_media(tmp_path / "slow.mp4", video_codec="h264", duration=2.0)
    assert feed_all(_EarlyStart(spool_after=None), head_of(path) + b"\x00" * 300_000, 1000) == []


def test_the_shipped_containers_make_no_copies_and_ask_for_none():
    """Their converters' /tmp is memory (compose's tmpfs) or a small emptyDir:
    copies are off there, and the gateway then publishes no job early for them."""
    import yaml

    from testkit import ROOT

    compose = yaml.safe_load((ROOT / "deploy/docker-compose.yaml").read_text())
    configmap = yaml.safe_load((ROOT / "deploy/k8s/base/configmap.yaml").read_text())
    for env in (compose["services"]["converter"]["environment"], compose["services"]["gateway"]["environment"],
                configmap["data"]):
        assert (env["CONVERTER_SPOOL_MAX_MB"], env["SPOOL_AFTER_BYTES"]) == ("0", "0")
