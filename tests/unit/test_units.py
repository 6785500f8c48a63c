"""Pure logic, no servers: option validation (gateway and converter), file
names, the queue message shape, tokens, keys, the gateway's key and user caches."""
from __future__ import annotations

import json
import time

import grpc
import jwt
import pytest

from video2mp3.auth.keys import KeyRing, generate, write_key
from video2mp3.converter import options as converter_options
from video2mp3.core import tokens
from video2mp3.core.errors import InvalidArgument, Reason
from video2mp3.domain import mp3_options, queue
from video2mp3.gateway import validation
from video2mp3.gateway.jwks import JwksCache
from video2mp3.gateway.user_check import AuthUnreachable, UserCheck
from video2mp3.media.v1 import media_pb2, queue_pb2


def req(**kw) -> media_pb2.UploadVideoRequest:
    return media_pb2.UploadVideoRequest(**kw)


def test_defaults_are_192k_cbr_stereo_source_rate():
    o = validation.conversion_options(req())
    assert (o.bitrate_kbps, o.channels, o.sample_rate_hz) == (192, 2, 0)
    assert not o.HasField("vbr_quality")
    assert not o.HasField("audio_track")


def test_vbr_replaces_bitrate():
    o = validation.conversion_options(req(vbr_quality=0))
    assert o.HasField("vbr_quality")
    assert o.vbr_quality == 0
    assert o.bitrate_kbps == 0


@pytest.mark.parametrize(("kw", "field"), [
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
    with pytest.raises(InvalidArgument) as e:
        validation.conversion_options(req(bitrate_kbps=100, channels=6, sample_rate_hz=96000, audio_track=-1))
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
    assert len(long) == validation.MAX_FILENAME_CHARS
    assert long.endswith("x.mp4")


def test_task_message_keeps_the_seed_shape():
    task = queue_pb2.ConversionTask(video_fid="abc", user_email="u@example.com", job_id="j1")
    task.options.bitrate_kbps = 128
    body = json.loads(queue.encode_task(task))
    assert list(body)[:3] == ["video_fid", "mp3_fid", "user_email"]
    assert body["mp3_fid"] is None
    assert body["job_id"] == "j1"
    assert queue.decode_task(queue.encode_task(task)) == task


def test_seed_message_without_our_fields_still_decodes():
    task = queue.decode_task(b'{"video_fid": "abc", "mp3_fid": null, "user_email": "u@example.com"}')
    assert task.video_fid == "abc"
    assert task.job_id == ""


@pytest.mark.parametrize("body", [b"not json", b'{"video_fid": 5}', b"[1,2]"])
def test_garbage_messages_are_rejected(body):
    with pytest.raises(ValueError, match="not a conversion task"):
        queue.decode_task(body)


def test_token_round_trip_and_failures():
    key, other = generate(), generate()
    lookup = {key.kid: key.public_key}.get
    t = tokens.issue(key.private_key, key.kid, "7", "a@example.com", ttl_seconds=60)
    assert jwt.get_unverified_header(t) == {"alg": "EdDSA", "kid": key.kid, "typ": "JWT"}
    assert tokens.verify(t, lookup) == tokens.Caller("7", "a@example.com")
    with pytest.raises(tokens.InvalidToken, match="expired"):
        tokens.verify(tokens.issue(key.private_key, key.kid, "7", "a", ttl_seconds=1, now=time.time() - 3600),
                      lookup)
    with pytest.raises(tokens.InvalidToken, match="signature"):
        tokens.verify(tokens.issue(other.private_key, key.kid, "7", "a", ttl_seconds=60), lookup)
    with pytest.raises(tokens.InvalidToken, match="unknown kid"):
        tokens.verify(tokens.issue(other.private_key, other.kid, "7", "a", ttl_seconds=60), lookup)
    with pytest.raises(tokens.InvalidToken, match="malformed"):
        tokens.verify("abc", lookup)
    with pytest.raises(tokens.InvalidToken, match="Bearer"):
        tokens.bearer_from_metadata([("authorization", "Basic abc")])
    with pytest.raises(tokens.InvalidToken, match="no authorization"):
        tokens.bearer_from_metadata([])


def test_jwk_round_trip_is_a_valid_jwks():
    key = generate()
    jwks = {"keys": [tokens.public_jwk(key.kid, key.public_key)]}
    parsed = jwt.PyJWKSet.from_dict(jwks)
    assert parsed[key.kid].algorithm_name == "EdDSA"
    t = tokens.issue(key.private_key, key.kid, "7", "a@example.com", ttl_seconds=60)
    assert jwt.decode(t, parsed[key.kid].key, algorithms=["EdDSA"], audience=tokens.AUDIENCE)["sub"] == "7"
    assert tokens.key_from_jwk(jwks["keys"][0]) is not None
    assert tokens.key_from_jwk({**jwks["keys"][0], "kty": "RSA"}) is None


def test_key_ring_pre_publishes_then_signs_then_retires(tmp_path):
    ttl, activate, reload_s = 100.0, 20.0, 5.0
    first = generate(now=1_000_000)
    write_key(tmp_path, first)
    ring = KeyRing(tmp_path, token_ttl_s=ttl, reload_s=reload_s, activate_after_s=activate)
    assert ring.signing(now=1_000_001).kid == first.kid  # a fresh deployment's only key signs at once
    second = generate(now=2_000_000)
    write_key(tmp_path, second)
    ring.reload()
    t = 2_000_000
    assert ring.signing(now=t + 1).kid == first.kid
    assert {k.kid for k in ring.published(now=t + 1)} == {first.kid, second.kid}  # published before it signs
    assert ring.signing(now=t + activate).kid == second.kid
    retire = t + activate + ttl + tokens.LEEWAY_S + reload_s
    assert {k.kid for k in ring.published(now=retire - 1)} == {first.kid, second.kid}
    assert {k.kid for k in ring.published(now=retire + 1)} == {second.kid}


def test_jwks_cache_refetches_unknown_kids_at_a_bounded_rate():
    key = generate()
    calls = []

    def fetch():
        calls.append(1)
        return {key.kid: key.public_key}

    cache = JwksCache(fetch, min_refetch_s=60)
    assert cache.lookup(key.kid) is not None
    assert len(calls) == 1
    for i in range(100):
        assert cache.lookup(f"forged-{i}") is None
    assert len(calls) == 1  # the first lookup used up the refetch budget
    assert cache.lookup(key.kid) is not None


def test_jwks_cache_keeps_keys_while_auth_is_down():
    key = generate()
    up = [True]

    def fetch():
        if not up[0]:
            raise _Down()
        return {key.kid: key.public_key}

    cache = JwksCache(fetch, min_refetch_s=0)
    assert cache.refresh()
    up[0] = False
    assert not cache.refresh()
    assert cache.lookup(key.kid) is not None


class _Down(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE


def test_user_check_caches_and_serves_stale_only_within_bounds():
    answers: list = [True]

    def get_me(user_id, token):
        a = answers[0]
        if isinstance(a, Exception):
            raise a
        return a

    check = UserCheck(get_me, ttl_s=0.05, stale_s=0.3)
    assert check.exists("1", "t")
    answers[0] = AuthUnreachable("down")
    time.sleep(0.06)
    assert check.exists("1", "t")  # stale but within stale_s
    time.sleep(0.3)
    with pytest.raises(AuthUnreachable):
        check.exists("1", "t")
    with pytest.raises(AuthUnreachable):
        check.exists("2", "t")  # never seen: no pass
    answers[0] = False
    assert not check.exists("3", "t")
