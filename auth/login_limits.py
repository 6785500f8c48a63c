"""Failed-login limits per account and per client address, shared by every auth
replica through one MySQL table.

Each (scope, subject) row counts failures in a fixed window (LOGIN_WINDOW_S,
from the first failure). Once `allowed` failures are reached, each further
failure blocks the subject for block_base * 2^(failures - allowed) seconds,
capped at block_max. A blocked attempt is refused before the user is looked up
or any password hashed. A correct password clears the account's row (not the
address's, or one valid account would launder guesses at others). Unknown
emails are counted like real ones: the answer never says which exists.

Times come from MySQL's clock, so replicas with skewed clocks agree. The check
and the count are separate statements: attempts already past the check when a
block starts still run, so at most HASH_CONCURRENCY-ish extra guesses slip in.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math

from video2mp3.auth.users import UserRepository
from video2mp3.core.errors import Reason, ResourceExhausted
from video2mp3.core.settings import setting

ACCOUNT, ADDRESS = "account", "address"

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS login_failures (
    scope VARCHAR(16) NOT NULL,
    subject VARCHAR(255) NOT NULL,
    failures INT NOT NULL,
    window_start DOUBLE NOT NULL,
    blocked_until DOUBLE NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, subject)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

_NOW = "UNIX_TIMESTAMP(NOW(6))"
# MySQL applies ON DUPLICATE KEY assignments left to right: window_start and
# blocked_until see the failures just computed.
_RECORD = f"""
INSERT INTO login_failures (scope, subject, failures, window_start, blocked_until)
VALUES (%(scope)s, %(subject)s, 1, {_NOW},
        IF(1 >= %(allowed)s, {_NOW} + LEAST(%(max)s, %(base)s), 0))
ON DUPLICATE KEY UPDATE
    failures = IF(window_start <= {_NOW} - %(window)s, 1, failures + 1),
    window_start = IF(failures = 1, {_NOW}, window_start),
    blocked_until = IF(failures >= %(allowed)s,
                       {_NOW} + LEAST(%(max)s, %(base)s * POW(2, failures - %(allowed)s)), 0)
"""


@dataclasses.dataclass(frozen=True)
class Limits:
    """The failed-login limits (auth's LOGIN_* settings). Failures allowed per
    window before each further one blocks for block_base * 2^(n - allowed) s, capped."""
    account_failures: int = setting("LOGIN_ACCOUNT_FAILURES", 5, minimum=1, help=(
        "failed logins of one account allowed in `LOGIN_WINDOW_S`; each further one blocks the account"))
    address_failures: int = setting("LOGIN_ADDRESS_FAILURES", 20, minimum=1, help=(
        "failed logins from one client address (the one Envoy appends to `x-forwarded-for`) allowed in "
        "`LOGIN_WINDOW_S`; each further one blocks the address"))
    window_s: float = setting("LOGIN_WINDOW_S", 900.0, minimum=1, help="the failure-counting window, seconds")
    block_base_s: float = setting("LOGIN_BLOCK_BASE_S", 1.0, minimum=0.01, help=(
        "the first block, seconds; doubled with each further failure"))
    block_max_s: float = setting("LOGIN_BLOCK_MAX_S", 900.0, minimum=0.01, help="the longest block, seconds")


class LoginBlocked(ResourceExhausted):
    """Too many failures: RESOURCE_EXHAUSTED with how long to wait, as RetryInfo
    and as `retry-after` trailing metadata (Envoy passes it on as the HTTP
    Retry-After header of the 429)."""

    def __init__(self, retry_after_s: float):
        wait = max(1, math.ceil(retry_after_s))
        super().__init__(f"too many failed logins; try again in {wait} s", reason=Reason.LOGIN_BLOCKED,
                         retry_after_s=wait, trailers=[("retry-after", str(wait))])


def _subject(text: str) -> str:
    return text if len(text) <= 255 else "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def client_address(metadata, peer: str) -> str:
    """The caller's address: the last x-forwarded-for entry (the one Envoy
    appended: use_remote_address), else the gRPC peer. Auth is reachable only
    through Envoy in every deployment, so a client cannot choose it."""
    for key, value in metadata or ():
        if key == "x-forwarded-for":
            last = value.split(",")[-1].strip()
            if last:
                return last
    # "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:..."
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:rest.find("]")]
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


class LoginLimits:
    def __init__(self, users: UserRepository, limits: Limits):
        self._users = users
        self.limits = limits

    def check(self, email: str, address: str) -> None:
        """Raise LoginBlocked if either the account or the address is blocked now."""
        with self._users.cursor() as cur:
            cur.execute(
                f"SELECT MAX(blocked_until - {_NOW}) FROM login_failures"
                " WHERE (scope = %s AND subject = %s) OR (scope = %s AND subject = %s)",
                (ACCOUNT, _subject(email), ADDRESS, _subject(address)))
            (wait,) = cur.fetchone()
        if wait is not None and float(wait) > 0:
            raise LoginBlocked(float(wait))

    def failed(self, email: str, address: str) -> None:
        lim = self.limits
        with self._users.cursor() as cur:
            for scope, subject, allowed in ((ACCOUNT, email, lim.account_failures),
                                            (ADDRESS, address, lim.address_failures)):
                cur.execute(_RECORD, {"scope": scope, "subject": _subject(subject), "allowed": allowed,
                                      "window": lim.window_s, "base": lim.block_base_s,
                                      "max": lim.block_max_s})

    def succeeded(self, email: str) -> None:
        with self._users.cursor() as cur:
            cur.execute("DELETE FROM login_failures WHERE scope = %s AND subject = %s",
                        (ACCOUNT, _subject(email)))

    def prune(self) -> None:
        """Drop rows whose window and block are both over (keeps the table small)."""
        with self._users.cursor() as cur:
            cur.execute(f"DELETE FROM login_failures WHERE window_start < {_NOW} - %s"
                        f" AND blocked_until < {_NOW}", (self.limits.window_s,))
