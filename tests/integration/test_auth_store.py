"""Auth's API-key and session tables against the real MariaDB, without a
server: the per-user limits, rotation under concurrency, pruning, and an
account's deletion taking its keys and sessions with it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pymysql
import pytest

from testkit import testbed
from video2mp3.auth import sessions as sessions_module
from video2mp3.auth import tables
from video2mp3.auth.api_keys import MAX_KEYS_PER_USER, ApiKeys, TooManyKeys
from video2mp3.auth.sessions import RefreshRefused, Refusal, Sessions, SessionSettings
from video2mp3.auth.users import UserRepository
from video2mp3.core.settings import MysqlSettings


@pytest.fixture
def users(mysql_db) -> Iterator[UserRepository]:
    repo = tables.repository(
        MysqlSettings(
            host=mysql_db["MYSQL_HOST"],
            port=int(mysql_db["MYSQL_PORT"]),
            user=mysql_db["MYSQL_USER"],
            password=mysql_db["MYSQL_PASSWORD"],
            db=mysql_db["MYSQL_DB"],
        )
    )
    repo.check()  # creates every table
    yield repo
    repo.close()


def new_user(users: UserRepository) -> int:
    return users.create(f"store-{testbed.hex_id()}@example.com", "not-a-real-hash").id


def count(users: UserRepository, sql: str, *args) -> int:
    with users.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def test_a_user_keeps_at_most_100_active_sessions(users):
    store = Sessions(users, SessionSettings())
    uid = new_user(users)
    started = [store.start(uid, "a@example.com") for _ in range(sessions_module.MAX_SESSIONS_PER_USER + 2)]
    active = store.list(uid, 200, None)
    assert len(active) == sessions_module.MAX_SESSIONS_PER_USER
    assert {s.id for s in active} == {r.session.id for r in started[2:]}  # the two oldest ended
    with pytest.raises(RefreshRefused) as e:
        store.refresh(started[0].refresh_token)
    assert e.value.refusal == Refusal.REVOKED
    store.refresh(started[-1].refresh_token)


def test_only_one_of_many_concurrent_refreshes_wins(users):
    store = Sessions(users, SessionSettings())
    uid = new_user(users)
    token = store.start(uid, "a@example.com").refresh_token
    outcomes: list[str] = []
    go = threading.Barrier(6)

    def racer():
        go.wait()
        try:
            store.refresh(token)
            outcomes.append("ok")
        except RefreshRefused as e:
            outcomes.append(e.refusal.value)

    threads = [threading.Thread(target=racer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1, outcomes
    assert set(outcomes) - {"ok"} <= {"REFRESH_TOKEN_REUSED", "SESSION_REVOKED"}


def test_ended_sessions_are_pruned_with_their_refresh_tokens(users):
    store = Sessions(users, SessionSettings())
    uid = new_user(users)
    old, kept = store.start(uid, "a@example.com"), store.start(uid, "a@example.com")
    store.revoke(uid, old.session.id)
    with users.cursor() as cur:  # as if it ended long ago
        cur.execute(
            "UPDATE sessions SET revoked_at = NOW(6) - INTERVAL %s SECOND WHERE id = %s",
            (sessions_module.RETAIN_ENDED_S + 60, old.session.id),
        )
    store.prune()
    assert count(users, "SELECT COUNT(*) FROM sessions WHERE id = %s", old.session.id) == 0
    assert count(users, "SELECT COUNT(*) FROM refresh_tokens WHERE session_id = %s", old.session.id) == 0
    assert count(users, "SELECT COUNT(*) FROM sessions WHERE id = %s", kept.session.id) == 1
    with pytest.raises(RefreshRefused) as e:
        store.refresh(old.refresh_token)
    assert e.value.refusal == Refusal.INVALID


def test_a_user_has_at_most_100_keys(users):
    keys = ApiKeys(users)
    uid = new_user(users)
    for i in range(MAX_KEYS_PER_USER):
        keys.create(uid, f"key {i}", frozenset())
    with pytest.raises(TooManyKeys):
        keys.create(uid, "one too many", frozenset())
    assert count(users, "SELECT COUNT(*) FROM api_keys WHERE user_id = %s", uid) == MAX_KEYS_PER_USER


def test_deleting_a_user_deletes_their_keys_and_sessions_in_one_transaction(users):
    keys, store = ApiKeys(users), Sessions(users, SessionSettings())
    uid, other = new_user(users), new_user(users)
    _, secret = keys.create(uid, "k", frozenset({"read"}))
    for user in (uid, other):
        store.refresh(store.start(user, "a@example.com").refresh_token)
        keys.create(user, "k2", frozenset())
    assert keys.authenticate(secret) is not None
    assert users.delete(uid)
    assert keys.authenticate(secret) is None
    for table in ("api_keys", "sessions", "refresh_tokens"):
        assert count(users, f"SELECT COUNT(*) FROM {table} WHERE user_id = %s", uid) == 0, table
        assert count(users, f"SELECT COUNT(*) FROM {table} WHERE user_id = %s", other) > 0, table


def test_a_failed_transaction_leaves_nothing(users):
    uid = new_user(users)
    insert = (
        "INSERT INTO sessions (id, user_id, created_at, refreshed_at, expires_at)"
        " VALUES ('aaaaaaaaaaaaaaaa', %s, NOW(6), NOW(6), NOW(6))"
    )

    def twice() -> None:
        with users.cursor(transaction=True) as cur:
            cur.execute(insert, (uid,))
            cur.execute(insert, (uid,))  # the same id: the second fails

    with pytest.raises(pymysql.IntegrityError):
        twice()
    assert count(users, "SELECT COUNT(*) FROM sessions WHERE user_id = %s", uid) == 0
