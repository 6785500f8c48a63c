"""Login sessions and their rotating refresh tokens, in MySQL (`sessions`, `refresh_tokens`).

A Login starts a session and hands out its first refresh token
(`v2mrt_...`, core/credentials.py). Each RefreshSession spends the token it
is given and hands out the next one, with a new access token (whose `sid`
claim names the session). Every refresh token ever issued is kept, as a
SHA-256 digest, with when it was used: presenting one that was used already
means two parties hold the session's tokens (one of them stole it), so the
whole session (the "family") is revoked and every later token of it fails.

A session ends when it is revoked (logout, DeleteSession, reuse, more than
MAX_SESSIONS_PER_USER) or expires: `refresh_ttl_s` after its last refresh
(idle), never later than `max_age_s` after the login. Its access tokens
are checked against it by auth at once (active()) and by the gateway
through auth every USER_CACHE_TTL_S. Ended sessions are kept RETAIN_ENDED_S
(so a late refresh says "revoked" rather than "unknown"), then pruned.

A refresh is one transaction that locks the presented token's row: of two
concurrent refreshes with the same token one wins and the other is a reuse.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import logging
import re
import secrets

from video2mp3.auth import paging
from video2mp3.auth.users import UserRepository
from video2mp3.core import credentials
from video2mp3.core.settings import setting

log = logging.getLogger(__name__)

CREATE_SESSIONS = """
CREATE TABLE IF NOT EXISTS sessions (
    id CHAR(16) NOT NULL PRIMARY KEY,
    user_id INT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    refreshed_at DATETIME(6) NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    revoked_at DATETIME(6) NULL,
    revoked_reason VARCHAR(32) NOT NULL DEFAULT '',
    user_agent VARCHAR(255) NOT NULL DEFAULT '',
    client_address VARCHAR(64) NOT NULL DEFAULT '',
    KEY sessions_user (user_id, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""
CREATE_REFRESH_TOKENS = """
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash BINARY(32) NOT NULL PRIMARY KEY,
    session_id CHAR(16) NOT NULL,
    user_id INT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    used_at DATETIME(6) NULL,
    KEY refresh_tokens_session (session_id),
    KEY refresh_tokens_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""
CREATE_TABLES = (CREATE_SESSIONS, CREATE_REFRESH_TOKENS)
TABLES = ("refresh_tokens", "sessions")

MAX_SESSIONS_PER_USER = 100
RETAIN_ENDED_S = 7 * 86400
ID_RE = re.compile(r"^[0-9a-f]{16}$")
_COLUMNS = "id, user_id, created_at, refreshed_at, expires_at, user_agent, client_address"
_ACTIVE = "revoked_at IS NULL AND expires_at > NOW(6)"


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    """How long a login session (its refresh tokens) lasts: docs/authentication.md."""

    refresh_ttl_s: int = setting(
        "REFRESH_TOKEN_TTL_SECONDS",
        14 * 86400,
        minimum=1,
        help=("a login session whose refresh token goes unused this long, seconds, expires (log in again)"),
    )
    max_age_s: int = setting(
        "SESSION_MAX_AGE_SECONDS",
        30 * 86400,
        minimum=1,
        help=("no login session lasts longer than this after its login, seconds, however often it is refreshed"),
    )


class Refusal(enum.StrEnum):
    """Why a refresh token is refused (each is a core.errors.Reason too)."""

    INVALID = "REFRESH_TOKEN_INVALID"
    REUSED = "REFRESH_TOKEN_REUSED"
    REVOKED = "SESSION_REVOKED"
    EXPIRED = "SESSION_EXPIRED"


class RefreshRefused(Exception):
    def __init__(self, refusal: Refusal):
        super().__init__(refusal.value)
        self.refusal = refusal


@dataclasses.dataclass(frozen=True)
class Session:
    id: str
    user_id: int
    created_at: dt.datetime  # UTC, timezone-aware, as every time here
    refreshed_at: dt.datetime
    expires_at: dt.datetime
    user_agent: str
    client_address: str


@dataclasses.dataclass(frozen=True)
class Renewal:
    """What a login or a refresh hands out."""

    session: Session
    refresh_token: str
    email: str

    def expires_in(self, now: dt.datetime | None = None) -> int:
        now = now or dt.datetime.now(dt.UTC)
        return max(0, int((self.session.expires_at - now).total_seconds()))


def _session(row) -> Session:
    sid, user_id, created, refreshed, expires, agent, address = row[:7]
    return Session(
        id=sid,
        user_id=int(user_id),
        created_at=created.replace(tzinfo=dt.UTC),
        refreshed_at=refreshed.replace(tzinfo=dt.UTC),
        expires_at=expires.replace(tzinfo=dt.UTC),
        user_agent=agent,
        client_address=address,
    )


class Sessions:
    def __init__(self, users: UserRepository, settings: SessionSettings):
        self._users = users
        self.settings = settings

    def _expiry(self, created: str) -> str:
        """SQL for a session's expiry after a refresh now; `created`: its creation time (SQL)."""
        return (
            f"LEAST(NOW(6) + INTERVAL {int(self.settings.refresh_ttl_s)} SECOND, "
            f"{created} + INTERVAL {int(self.settings.max_age_s)} SECOND)"
        )

    def _issue(self, cur, session_id: str, user_id: int) -> str:
        token = credentials.new_secret(credentials.REFRESH_TOKEN_PREFIX)
        cur.execute(
            "INSERT INTO refresh_tokens (token_hash, session_id, user_id, created_at) VALUES (%s, %s, %s, NOW(6))",
            (credentials.digest(token), session_id, user_id),
        )
        return token

    def start(self, user_id: int, email: str, user_agent: str = "", client_address: str = "") -> Renewal:
        """A new session of the user, with its first refresh token."""
        session_id = secrets.token_hex(8)
        with self._users.cursor(transaction=True) as cur:
            cur.execute(
                "INSERT INTO sessions (id, user_id, created_at, refreshed_at, expires_at, user_agent,"
                f" client_address) VALUES (%s, %s, NOW(6), NOW(6), {self._expiry('NOW(6)')}, %s, %s)",
                (session_id, user_id, user_agent[:255], client_address[:64]),
            )
            token = self._issue(cur, session_id, user_id)
            cur.execute(f"SELECT {_COLUMNS} FROM sessions WHERE id = %s", (session_id,))
            session = _session(cur.fetchone())
            self._evict_beyond_limit(cur, user_id)
        return Renewal(session, token, email)

    @staticmethod
    def _evict_beyond_limit(cur, user_id: int) -> None:
        """The oldest active sessions past MAX_SESSIONS_PER_USER end (a script that logs in every
        minute and never logs out must not grow the table without bound)."""
        cur.execute(
            f"SELECT id FROM sessions WHERE user_id = %s AND {_ACTIVE}"
            " ORDER BY created_at DESC, id DESC LIMIT 1000 OFFSET %s",
            (user_id, MAX_SESSIONS_PER_USER),
        )
        extra = [row[0] for row in cur.fetchall()]
        if extra:
            cur.execute(
                "UPDATE sessions SET revoked_at = NOW(6), revoked_reason = 'too_many_sessions'"
                f" WHERE id IN ({', '.join(['%s'] * len(extra))})",
                extra,
            )
            log.info("user %d: ended %d session(s) past the limit of %d", user_id, len(extra), MAX_SESSIONS_PER_USER)

    def refresh(self, refresh_token: str) -> Renewal:
        """Spend `refresh_token` for the next one. RefreshRefused says why not; a reused
        token has revoked its session by the time that is raised."""
        if not credentials.well_formed(refresh_token, credentials.REFRESH_TOKEN_PREFIX):
            raise RefreshRefused(Refusal.INVALID)
        outcome = self._refresh(credentials.digest(refresh_token))
        if isinstance(outcome, Refusal):
            raise RefreshRefused(outcome)
        return outcome

    def _refresh(self, token_hash: bytes) -> Renewal | Refusal:
        # Returns a Refusal rather than raising it: the revocation of a reused
        # token's session must commit.
        with self._users.cursor(transaction=True) as cur:
            cur.execute(
                "SELECT rt.session_id, rt.user_id, rt.used_at IS NOT NULL, s.revoked_at IS NOT NULL,"
                " s.expires_at <= NOW(6), u.email FROM refresh_tokens rt"
                " JOIN sessions s ON s.id = rt.session_id JOIN users u ON u.id = rt.user_id"
                " WHERE rt.token_hash = %s FOR UPDATE",
                (token_hash,),
            )
            row = cur.fetchone()
            if row is None:
                return Refusal.INVALID
            session_id, user_id, used, revoked, expired, email = row
            if revoked:
                return Refusal.REVOKED
            if used:
                cur.execute(
                    "UPDATE sessions SET revoked_at = NOW(6), revoked_reason = 'refresh_token_reused' WHERE id = %s",
                    (session_id,),
                )
                log.warning(
                    "a used refresh token of session %s (user %s) was presented again: session revoked",
                    session_id,
                    user_id,
                )
                return Refusal.REUSED
            if expired:
                return Refusal.EXPIRED
            cur.execute("UPDATE refresh_tokens SET used_at = NOW(6) WHERE token_hash = %s", (token_hash,))
            cur.execute(
                f"UPDATE sessions SET refreshed_at = NOW(6), expires_at = {self._expiry('created_at')} WHERE id = %s",
                (session_id,),
            )
            token = self._issue(cur, session_id, int(user_id))
            cur.execute(f"SELECT {_COLUMNS} FROM sessions WHERE id = %s", (session_id,))
            return Renewal(_session(cur.fetchone()), token, email)

    def revoke_by_token(self, refresh_token: str) -> str | None:
        """Logout: revoke the session of `refresh_token` (used or not). Its id, or None if unknown."""
        if not credentials.well_formed(refresh_token, credentials.REFRESH_TOKEN_PREFIX):
            return None
        with self._users.cursor() as cur:
            cur.execute(
                "SELECT session_id FROM refresh_tokens WHERE token_hash = %s", (credentials.digest(refresh_token),)
            )
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute(
                "UPDATE sessions SET revoked_at = NOW(6), revoked_reason = 'logout'"
                " WHERE id = %s AND revoked_at IS NULL",
                (row[0],),
            )
        return row[0]

    def revoke(self, user_id: int, session_id: str) -> bool:
        """DeleteSession: True if it was an active session of the user."""
        if not ID_RE.match(session_id):
            return False
        with self._users.cursor() as cur:
            return (
                cur.execute(
                    "UPDATE sessions SET revoked_at = NOW(6), revoked_reason = 'deleted'"
                    f" WHERE id = %s AND user_id = %s AND {_ACTIVE}",
                    (session_id, user_id),
                )
                > 0
            )

    def is_revoked(self, user_id: int, session_id: str) -> bool:
        """Whether an access token of this session must be refused: the session was revoked
        (or pruned, or is not the user's). Expiry does not matter here: an access token lives
        its own, shorter, lifetime."""
        with self._users.cursor() as cur:
            cur.execute("SELECT revoked_at IS NULL FROM sessions WHERE id = %s AND user_id = %s", (session_id, user_id))
            row = cur.fetchone()
        return row is None or not row[0]

    def list(self, user_id: int, size: int, cursor: paging.Cursor | None) -> list[Session]:
        """Up to `size` active sessions after `cursor`, newest first."""
        where, args = paging.after_clause(cursor)
        with self._users.cursor() as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM sessions WHERE user_id = %s AND {_ACTIVE}{where}"
                " ORDER BY created_at DESC, id DESC LIMIT %s",
                (user_id, *args, size),
            )
            return [_session(row) for row in cur.fetchall()]

    def prune(self) -> None:
        """Forget sessions that ended more than RETAIN_ENDED_S ago, with their refresh tokens."""
        ended = (
            f"(s.expires_at < NOW(6) - INTERVAL {RETAIN_ENDED_S} SECOND"
            f" OR s.revoked_at < NOW(6) - INTERVAL {RETAIN_ENDED_S} SECOND)"
        )
        with self._users.cursor() as cur:
            cur.execute(f"DELETE rt FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id WHERE {ended}")
            cur.execute(f"DELETE s FROM sessions s WHERE {ended}")
