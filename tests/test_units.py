"""Pure logic, no servers: option validation (gateway and converter), file
names, the queue message shape, tokens."""
from __future__ import annotations

import json
import time

import pytest
from video2mp3.media.v1 import media_pb2, queue_pb2

from common import mp3_options, queue, tokens
from common.errors import InvalidArgument, Reason
from converter import options as converter_options
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
    with pytest.raises(InvalidArgument, match=field) as e:
        validation.conversion_options(req(**kw))
    assert e.value.reason == Reason.INVALID_OPTIONS
    assert [v.field for v in e.value.violations] == [field]


def test_every_bad_option_is_a_violation_of_its_own():
    e = pytest.raises(InvalidArgument, validation.conversion_options,
                      req(bitrate_kbps=100, channels=6, sample_rate_hz=96000, audio_track=-1))
    assert [v.field for v in e.value.violations] == [
        "bitrate_kbps", "channels", "sample_rate_hz", "audio_track"]
    assert all(v.field in v.description for v in e.value.violations)


def test_every_mp3_bitrate_and_rate_is_accepted():
    for b in mp3_options.BITRATES_KBPS:
        assert validation.conversion_options(req(bitrate_kbps=b)).bitrate_kbps == b
    for r in mp3_options.SAMPLE_RATES_HZ:
        assert validation.conversion_options(req(sample_rate_hz=r)).sample_rate_hz == r


@pytest.mark.parametrize("kw", [{"bitrate_kbps": 100}, {"bitrate_kbps": 31}, {"vbr_quality": 10},
                                {"vbr_quality": 2, "bitrate_kbps": 128}, {"channels": 3},
                                {"sample_rate_hz": 44000}, {"audio_track": -1}])
def test_gateway_and_converter_agree_on_the_options(kw):
    # One rule set: what the gateway refuses, the converter refuses too.
    assert mp3_options.violations(req(**kw))
    with pytest.raises(converter_options.InvalidOptions):
        converter_options.resolve(media_pb2.ConversionOptions(**kw), 44100)


def test_what_the_gateway_accepts_the_converter_resolves():
    ok = validation.conversion_options(req(vbr_quality=3, channels=1, audio_track=1))
    s = converter_options.resolve(ok, 96000)
    assert (s.vbr_quality, s.channels, s.sample_rate) == (3, 1, 48000)


def test_filename_keeps_the_base_name_only():
    assert validation.filename("C:\\videos\\a.mp4") == "a.mp4"
    assert validation.filename("../../etc/passwd") == "passwd"
    assert validation.filename("") == "upload"
    assert validation.filename("/") == "upload"


def test_filename_keeps_unicode_drops_control_characters_and_is_bounded():
    assert validation.filename("a\nb\x00\x7f\x85.mp4") == "ab.mp4"
    assert validation.filename("Ünïcødé 視頻 🎵.mkv") == "Ünïcødé 視頻 🎵.mkv"
    long = validation.filename("x" * 1000 + ".mp4")
    assert len(long) == validation.MAX_FILENAME_CHARS and long.endswith("x.mp4")


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
