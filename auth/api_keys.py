"""API keys in MySQL (`api_keys`): made, listed and deleted by their owner, checked on every use.

A key is `v2m_` and 43 random characters (core/credentials.py); the table holds
its SHA-256 (unique, the lookup), its first characters (to tell keys apart),
a display name, its scopes ("read", "write", both or "" for unrestricted) and
when it was created and last used. The key itself is returned by create()
only.

A key is looked up with its user (a join): a key whose user is gone never
works, whatever is left in the table. last_used_at is written at most once a
minute per key (a busy program costs one UPDATE a minute, not one per call),
so it is right to the minute.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets

from video2mp3.auth import paging
from video2mp3.auth.users import UserRepository
from video2mp3.core import credentials

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS api_keys (
    id CHAR(16) NOT NULL PRIMARY KEY,
    user_id INT NOT NULL,
    key_hash BINARY(32) NOT NULL,
    key_prefix VARCHAR(16) NOT NULL,
    display_name VARCHAR(100) NOT NULL,
    scopes VARCHAR(64) NOT NULL DEFAULT '',
    created_at DATETIME(6) NOT NULL,
    last_used_at DATETIME(6) NULL,
    UNIQUE KEY api_keys_hash (key_hash),
    KEY api_keys_user (user_id, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""
TABLE = "api_keys"

MAX_KEYS_PER_USER = 100
MAX_DISPLAY_NAME = 100
LAST_USED_GRANULARITY_S = 60
ID_RE = re.compile(r"^[0-9a-f]{16}$")
_COLUMNS = "id, user_id, display_name, scopes, key_prefix, created_at, last_used_at"


class TooManyKeys(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class ApiKey:
    id: str
    user_id: int
    display_name: str
    scopes: frozenset[str]
    key_prefix: str
    created_at: dt.datetime  # UTC, timezone-aware
    last_used_at: dt.datetime | None


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return value.replace(tzinfo=dt.UTC) if value is not None else None


def _key(row) -> ApiKey:
    key_id, user_id, name, scopes, prefix, created, last_used = row[:7]
    return ApiKey(
        id=key_id,
        user_id=int(user_id),
        display_name=name,
        scopes=credentials.decode_scopes(scopes),
        key_prefix=prefix,
        created_at=_utc(created) or created,
        last_used_at=_utc(last_used),
    )


class ApiKeys:
    def __init__(self, users: UserRepository):
        self._users = users

    def create(self, user_id: int, display_name: str, scopes: frozenset[str]) -> tuple[ApiKey, str]:
        """(the key's record, the key itself). TooManyKeys at MAX_KEYS_PER_USER."""
        secret = credentials.new_secret(credentials.API_KEY_PREFIX)
        key_id = secrets.token_hex(8)
        # The user's row, locked: concurrent creates count one after the other.
        with self._users.cursor(transaction=True) as cur:
            cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (user_id,))
            cur.execute("SELECT COUNT(*) FROM api_keys WHERE user_id = %s", (user_id,))
            if cur.fetchone()[0] >= MAX_KEYS_PER_USER:
                raise TooManyKeys()
            cur.execute(
                "INSERT INTO api_keys (id, user_id, key_hash, key_prefix, display_name, scopes, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, NOW(6))",
                (
                    key_id,
                    user_id,
                    credentials.digest(secret),
                    credentials.hint(secret),
                    display_name,
                    credentials.encode_scopes(scopes),
                ),
            )
            cur.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = %s", (key_id,))
            return _key(cur.fetchone()), secret

    def list(self, user_id: int, size: int, cursor: paging.Cursor | None) -> list[ApiKey]:
        """Up to `size` keys after `cursor`, newest first."""
        where, args = paging.after_clause(cursor)
        with self._users.cursor() as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE user_id = %s{where} ORDER BY created_at DESC, id DESC LIMIT %s",
                (user_id, *args, size),
            )
            return [_key(row) for row in cur.fetchall()]

    def delete(self, user_id: int, key_id: str) -> bool:
        """True if the user had that key."""
        if not ID_RE.match(key_id):
            return False
        with self._users.cursor() as cur:
            return cur.execute("DELETE FROM api_keys WHERE id = %s AND user_id = %s", (key_id, user_id)) > 0

    def authenticate(self, secret: str) -> ApiKey | None:
        """The key if `secret` is one in use (its user exists), else None; notes the use."""
        if not credentials.well_formed(secret, credentials.API_KEY_PREFIX):
            return None
        with self._users.cursor() as cur:
            cur.execute(
                "SELECT k.id, k.user_id, k.display_name, k.scopes, k.key_prefix, k.created_at, k.last_used_at,"
                " (k.last_used_at IS NULL OR k.last_used_at < NOW(6) - INTERVAL %s SECOND)"
                " FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = %s",
                (LAST_USED_GRANULARITY_S, credentials.digest(secret)),
            )
            row = cur.fetchone()
            if row is None:
                return None
            if row[7]:
                cur.execute("UPDATE api_keys SET last_used_at = NOW(6) WHERE id = %s", (row[0],))
        return _key(row)
