"""Password hashing with argon2id (argon2-cffi's defaults: RFC 9106 low-memory profile).

One hash or verify takes ~0.1 s of CPU and 64 MiB, so at most `concurrency` run at
once: a burst of logins queues here instead of exhausting memory.
"""
from __future__ import annotations

import contextlib
import logging
import secrets
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

log = logging.getLogger(__name__)


class Passwords:
    def __init__(self, concurrency: int, hasher: PasswordHasher | None = None):
        self._hasher = hasher or PasswordHasher()
        self._slots = threading.BoundedSemaphore(concurrency)
        # Verified against when the email is unknown, so that "no such user"
        # costs the same time as "wrong password" (no timing oracle).
        self._dummy_hash = self.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        with self._slots:
            return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> tuple[bool, str | None]:
        """(matches, new_hash): new_hash is set when the stored hash used weaker
        parameters than today's and should be replaced. A None stored_hash (unknown
        user) is checked against a dummy hash and never matches."""
        with self._slots:
            if stored_hash is None:
                with contextlib.suppress(VerificationError):
                    self._hasher.verify(self._dummy_hash, password)
                return False, None
            try:
                self._hasher.verify(stored_hash, password)
            except VerifyMismatchError:
                return False, None
            except (InvalidHashError, VerificationError):
                # Not an argon2 hash (e.g. a seed row with a plain-text password):
                # never compared as text; the user must reset it.
                log.warning("stored password is not a valid argon2 hash; refusing login")
                return False, None
            if self._hasher.check_needs_rehash(stored_hash):
                return True, self._hasher.hash(password)
            return True, None
