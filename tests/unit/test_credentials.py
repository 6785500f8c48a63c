"""API keys, refresh tokens and sessions, without a server: their shapes and
digests, which scope each RPC needs, page tokens, the sid claim, the
gateway's key cache (its bound, and no stale answers) and the CLI's renewal
timing."""

from __future__ import annotations

import datetime as dt
import hashlib
import time

import pytest

from video2mp3.auth import paging
from video2mp3.auth.keys import generate
from video2mp3.cli.session import needs_renewal
from video2mp3.core import credentials, tokens
from video2mp3.core.errors import InvalidArgument, PermissionDenied, Reason
from video2mp3.gateway.api_keys import ApiKeyCheck
from video2mp3.gateway.auth import Authenticator
from video2mp3.gateway.user_check import AuthUnreachable, UserCheck
from video2mp3.media.v1 import media_pb2

KEY = credentials.new_secret(credentials.API_KEY_PREFIX)


def test_secrets_are_prefixed_random_and_stored_as_sha256():
    refresh = credentials.new_secret(credentials.REFRESH_TOKEN_PREFIX)
    assert KEY.startswith("v2m_")
    assert len(KEY) == 47
    assert refresh.startswith("v2mrt_")
    assert not credentials.is_api_key(refresh)  # "v2mrt_" is not "v2m_"
    assert credentials.is_api_key(KEY)
    assert credentials.well_formed(KEY, credentials.API_KEY_PREFIX)
    assert not credentials.well_formed(refresh, credentials.API_KEY_PREFIX)
    for bad in ("v2m_", "v2m_short", KEY + "x", KEY[:-1] + "!", "V2M_" + KEY[4:]):
        assert not credentials.well_formed(bad, credentials.API_KEY_PREFIX), bad
    assert credentials.digest(KEY) == hashlib.sha256(KEY.encode()).digest()
    assert credentials.hint(KEY) == KEY[:8]
    assert len({credentials.new_secret(credentials.API_KEY_PREFIX) for _ in range(100)}) == 100


@pytest.mark.parametrize(
    ("method", "needed"),
    [
        ("/video2mp3.media.v1.MediaService/GetJob", credentials.READ),
        ("/video2mp3.media.v1.MediaService/ListJobs", credentials.READ),
        ("/video2mp3.media.v1.MediaService/WatchJob", credentials.READ),
        ("/video2mp3.media.v1.MediaService/DownloadMp3", credentials.READ),
        ("/video2mp3.media.v1.MediaService/ZipJobs", credentials.READ),
        ("/video2mp3.media.v1.MediaService/UploadVideo", credentials.WRITE),
        ("/video2mp3.media.v1.MediaService/DeleteJob", credentials.WRITE),
        ("/video2mp3.media.v1.MediaService/DeleteMyData", credentials.ACCOUNT),
        # RPCs added later get the safe default by their AIP verb.
        ("CreateWebhook", credentials.WRITE),
        ("RedeliverWebhook", credentials.WRITE),
        ("ListWebhooks", credentials.READ),
    ],
)
def test_each_rpc_needs_a_permission(method, needed):
    assert credentials.needed_permission(method) == needed


def test_every_media_rpc_is_classified_as_its_name_says():
    rpcs = {m.name for m in media_pb2.DESCRIPTOR.services_by_name["MediaService"].methods}
    reads = {m for m in rpcs if credentials.needed_permission(m) == credentials.READ}
    assert {"GetJob", "ListJobs", "WatchJob", "DownloadMp3", "GetHealth"} <= reads
    assert {"UploadVideo", "DeleteJob"} <= rpcs - reads


def test_scopes_allow():
    read, write = credentials.READ, credentials.WRITE
    assert credentials.allows(frozenset(), read)
    assert credentials.allows(frozenset(), write)
    assert credentials.allows({read}, read)
    assert not credentials.allows({read}, write)
    assert not credentials.allows({write}, read)
    assert credentials.allows({read, write}, write)
    for scopes in (frozenset(), frozenset({read, write})):
        assert not credentials.allows(scopes, credentials.ACCOUNT)
    assert credentials.describe_scopes({read}) == "read-only"
    assert credentials.describe_scopes(set()) == "unrestricted"
    assert credentials.decode_scopes(credentials.encode_scopes({write, read})) == {read, write}
    assert credentials.encode_scopes(set()) == ""
    assert credentials.decode_scopes("") == frozenset()


def test_authorize_refuses_what_a_keys_scopes_do_not_cover():
    read_only = tokens.Caller("1", "a@example.com", api_key_id="k1", scopes=frozenset({credentials.READ}))
    full_key = tokens.Caller("1", "a@example.com", api_key_id="k2")
    session = tokens.Caller("1", "a@example.com", session_id="s1")
    upload = "/video2mp3.media.v1.MediaService/UploadVideo"
    Authenticator.authorize(read_only, "/video2mp3.media.v1.MediaService/ListJobs")
    Authenticator.authorize(full_key, upload)
    Authenticator.authorize(session, "/video2mp3.media.v1.MediaService/DeleteMyData")
    with pytest.raises(PermissionDenied) as e:
        Authenticator.authorize(read_only, upload)
    assert e.value.reason == Reason.API_KEY_SCOPE_INSUFFICIENT
    assert "read-only" in e.value.message
    assert e.value.metadata["needed_scope"] == "write"
    with pytest.raises(PermissionDenied) as e:
        Authenticator.authorize(full_key, "/video2mp3.media.v1.MediaService/DeleteMyData")
    assert e.value.reason == Reason.SESSION_REQUIRED


def test_access_tokens_carry_their_session():
    key = generate()
    token = tokens.issue(key.private_key, key.kid, "7", "a@example.com", 60, session_id="0123456789abcdef")
    caller = tokens.verify(token, {key.kid: key.public_key}.get)
    assert caller.session_id == "0123456789abcdef"
    assert caller == tokens.Caller("7", "a@example.com")  # equal: the same user
    plain = tokens.verify(
        tokens.issue(key.private_key, key.kid, "7", "a@example.com", 60), {key.kid: key.public_key}.get
    )
    assert plain.session_id == ""
    assert not plain.is_api_key


def test_page_tokens():
    when = dt.datetime(2026, 12, 1, 10, 30, 0, 123456, tzinfo=dt.UTC)
    token = paging.encode(when, "abcdef0123456789")
    assert paging.decode(token) == (when.replace(tzinfo=None), "abcdef0123456789")
    assert paging.decode("") is None
    for bad in ("garbage!", "bm90aGluZw", paging.encode(when, "")[:-2]):
        with pytest.raises(InvalidArgument) as e:
            paging.decode(bad)
        assert e.value.reason == Reason.INVALID_PAGE
    assert paging.page_size(0) == paging.DEFAULT_PAGE_SIZE
    assert paging.page_size(1000) == paging.MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        paging.page_size(-1)


class _Auth:
    """Stands in for auth's GetCredential: counts the calls, answers what it is told."""

    def __init__(self):
        self.calls = 0
        self.answer: tokens.Caller | str | Exception = tokens.Caller("1", "a@example.com", api_key_id="k")

    def __call__(self, key: str):
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_the_key_cache_holds_an_answer_for_its_ttl_and_never_longer():
    auth = _Auth()
    check = ApiKeyCheck(auth, ttl_s=0.2)
    for _ in range(2):
        caller = check.check(KEY)
        assert isinstance(caller, tokens.Caller)
        assert caller.user_id == "1"
    assert auth.calls == 1  # cached
    auth.answer = Reason.API_KEY_INVALID  # deleted
    assert isinstance(check.check(KEY), tokens.Caller)  # still within the ttl
    time.sleep(0.25)
    assert check.check(KEY) == Reason.API_KEY_INVALID
    assert auth.calls == 2
    # Auth down: no stale pass once the ttl is over.
    auth.answer = tokens.Caller("1", "a@example.com", api_key_id="k")
    time.sleep(0.25)
    assert isinstance(check.check(KEY), tokens.Caller)
    auth.answer = AuthUnreachable("down")
    time.sleep(0.25)
    with pytest.raises(AuthUnreachable):
        check.check(KEY)
    # A malformed key costs auth nothing.
    calls = auth.calls
    assert check.check("v2m_nope") == Reason.API_KEY_INVALID
    assert auth.calls == calls


def test_the_key_cache_with_ttl_zero_asks_every_time():
    auth = _Auth()
    check = ApiKeyCheck(auth, ttl_s=0)
    for _ in range(3):
        check.check(KEY)
    assert auth.calls == 3


def test_user_check_remembers_each_session_and_why_it_was_refused():
    answers = {"s1": True, "s2": Reason.SESSION_REVOKED}
    asked: list[str] = []

    def get_me(user_id: str, token: str):
        asked.append(token)
        return answers[token]

    check = UserCheck(get_me, ttl_s=60, stale_s=600)
    assert check.refusal("1", "s1", session_id="s1") is None
    assert check.refusal("1", "s2", session_id="s2") == Reason.SESSION_REVOKED
    assert check.refusal("1", "s2", session_id="s2") == Reason.SESSION_REVOKED
    assert asked == ["s1", "s2"]  # one question per session
    check.forget("1")
    assert check.refusal("1", "s1", session_id="s1") is None
    assert asked == ["s1", "s2", "s1"]


@pytest.mark.parametrize(
    ("iat", "exp", "due"),
    [
        (0, 3600, False),  # fresh
        (-3590, 10, True),  # 10 s left of an hour: within the minute
        (-6, 2, True),  # an 8 s token with 2 s left: within a quarter
        (-2, 6, False),
        (-7200, -3600, True),  # long expired
    ],
)
def test_the_cli_renews_within_a_minute_or_a_quarter_of_the_lifetime(iat, exp, due):
    key = generate()
    now = time.time()
    token = tokens.issue(key.private_key, key.kid, "1", "a@example.com", exp - iat, now=now + iat)
    assert needs_renewal(token, now=now) is due
    assert needs_renewal("not a jwt", now=now) is False
