"""Pure logic, no servers: option validation, the queue message shape, tokens."""
from __future__ import annotations

import json
import time

import pytest
from video2mp3.media.v1 import media_pb2, queue_pb2

from common import queue, tokens
from gateway import validation


def req(**kw) -> media_pb2.UploadVideoRequest:
    return media_pb2.UploadVideoRequest(**kw)


def test_defaults_are_192k_cbr_stereo_source_rate():
    o = validation.conversion_options(req())
    assert (o.bitrate_kbps, o.channels, o.sample_rate_hz) == (192, 2, 0)
    assert not o.HasField("vbr_quality") and not o.HasField("audio_track")


def test_vbr_replaces_bitrate():
    o = validation.conversion_options(req(vbr_quality=0))
    assert o.HasField("vbr_quality") and o.vbr_quality == 0 and o.bitrate_kbps == 0


@pytest.mark.parametrize("kw, field", [
    ({"bitrate_kbps": 31}, "bitrate_kbps"), ({"bitrate_kbps": 321}, "bitrate_kbps"),
    ({"vbr_quality": -1}, "vbr_quality"), ({"vbr_quality": 10}, "vbr_quality"),
    ({"vbr_quality": 2, "bitrate_kbps": 128}, "vbr_quality"),
    ({"channels": 3}, "channels"), ({"sample_rate_hz": 96000}, "sample_rate_hz"),
    ({"audio_track": -1}, "audio_track"),
])
def test_invalid_options_name_their_field(kw, field):
    with pytest.raises(validation.InvalidOptions, match=field):
        validation.conversion_options(req(**kw))


def test_every_mp3_bitrate_and_rate_is_accepted():
    for b in validation.MP3_BITRATES:
        assert validation.conversion_options(req(bitrate_kbps=b)).bitrate_kbps == b
    for r in validation.MP3_SAMPLE_RATES:
        assert validation.conversion_options(req(sample_rate_hz=r)).sample_rate_hz == r


def test_filename_keeps_the_base_name_only():
    assert validation.filename("C:\\videos\\a.mp4") == "a.mp4"
    assert validation.filename("../../etc/passwd") == "passwd"
    assert validation.filename("") == "upload"
    with pytest.raises(validation.InvalidOptions):
        validation.filename("a\nb.mp4")


def test_task_message_keeps_the_seed_shape():
    task = queue_pb2.ConversionTask(video_fid="abc", user_email="u@example.com", job_id="j1")
    task.options.bitrate_kbps = 128
    body = json.loads(queue.encode_task(task))
    assert list(body)[:3] == ["video_fid", "mp3_fid", "user_email"]
    assert body["mp3_fid"] is None and body["job_id"] == "j1"
    assert queue.decode_task(queue.encode_task(task)) == task


def test_seed_message_without_our_fields_still_decodes():
    task = queue.decode_task(b'{"video_fid": "abc", "mp3_fid": null, "user_email": "u@example.com"}')
    assert task.video_fid == "abc" and task.job_id == ""


@pytest.mark.parametrize("body", [b"not json", b'{"video_fid": 5}', b"[1,2]"])
def test_garbage_messages_are_rejected(body):
    with pytest.raises(ValueError):
        queue.decode_task(body)


def test_token_round_trip_and_failures():
    t = tokens.issue("k" * 32, "7", "a@example.com", ttl_seconds=60)
    assert tokens.verify("k" * 32, t) == tokens.Caller("7", "a@example.com")
    with pytest.raises(tokens.InvalidToken, match="expired"):
        tokens.verify("k" * 32, tokens.issue("k" * 32, "7", "a", ttl_seconds=1, now=time.time() - 10))
    with pytest.raises(tokens.InvalidToken, match="signature"):
        tokens.verify("k" * 32, tokens.issue("x" * 32, "7", "a", ttl_seconds=60))
    with pytest.raises(tokens.InvalidToken, match="malformed"):
        tokens.verify("k" * 32, "abc")
    with pytest.raises(tokens.InvalidToken, match="Bearer"):
        tokens.bearer_from_metadata([("authorization", "Basic abc")])
    with pytest.raises(tokens.InvalidToken, match="missing"):
        tokens.bearer_from_metadata([])
