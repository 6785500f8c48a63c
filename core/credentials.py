"""API keys and refresh tokens: their shape, how they are stored, and what a key's scopes allow.

Both are 32 random bytes (`secrets`), base64url, told apart by a prefix:

    v2m_<43 characters>     an API key, sent as `authorization: Bearer v2m_...`
                            wherever an access token goes (auth/api_keys.py)
    v2mrt_<43 characters>   a refresh token, sent only in the body of
                            RefreshSession / RevokeSession (auth/sessions.py)

Only their SHA-256 digests are stored. A secret of 256 random bits needs
neither salt nor a slow hash (argon2 is for what people choose): nothing can
be guessed from the digest, and a stolen table holds nothing that works.

A key's scopes, and which scope each RPC needs: the `Get`, `List`, `Watch`
and `Download` RPCs (AIP's read verbs) and `ZipJobs` (a download of several)
need READ, `DeleteMyData` is the
account's (an access token only: no API key may empty the account), every
other RPC, uploads and deletes and whatever is added later, needs WRITE. A
key with no scopes has both.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable

API_KEY_PREFIX = "v2m_"
REFRESH_TOKEN_PREFIX = "v2mrt_"
_BODY = re.compile(r"^[A-Za-z0-9_-]{43}$")  # base64url of 32 bytes, unpadded
# What a list of keys shows: the prefix and this many characters of the secret.
HINT_CHARS = 4

READ, WRITE, ACCOUNT = "read", "write", "account"
SCOPES = (READ, WRITE)
# The ApiKeyScope enum value names of protos/video2mp3/auth/v1/auth.proto, by scope.
SCOPE_ENUM_NAMES = {READ: "API_KEY_SCOPE_READ", WRITE: "API_KEY_SCOPE_WRITE"}
_READ_VERBS = ("Get", "List", "Watch", "Download", "Zip")
_ACCOUNT_METHODS = {"DeleteMyData"}

# Refusals said the same way by auth and the gateway (reasons in core/errors.py).
API_KEY_INVALID_MESSAGE = (
    "this API key is not valid (deleted, or mistyped); check it, or create a new one (POST /v1/apiKeys)"
)
SESSION_REVOKED_MESSAGE = "your session has ended (logged out, or revoked); log in again"
SESSION_REQUIRED_MESSAGE = (
    "{what} needs a login session, not an API key: log in (POST /v1/login) and use its access token"
)


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    """What is stored and looked up: SHA-256 of the whole secret, prefix included."""
    return hashlib.sha256(secret.encode()).digest()


def is_api_key(credential: str) -> bool:
    """A bearer credential that claims to be an API key (well formed or not)."""
    return credential.startswith(API_KEY_PREFIX)


def well_formed(secret: str, prefix: str) -> bool:
    """Prefix and 43 base64url characters: anything else is refused without a lookup."""
    return secret.startswith(prefix) and bool(_BODY.match(secret[len(prefix) :]))


def hint(secret: str) -> str:
    """The first characters, to tell keys apart in a list (`v2m_AbCd`)."""
    return secret[: len(API_KEY_PREFIX) + HINT_CHARS]


def needed_permission(method_name: str) -> str:
    """READ, WRITE or ACCOUNT for a gRPC method ("/pkg.Service/Method" or "Method")."""
    name = method_name.rsplit("/", 1)[-1]
    if name in _ACCOUNT_METHODS:
        return ACCOUNT
    return READ if name.startswith(_READ_VERBS) else WRITE


def allows(scopes: Iterable[str], permission: str) -> bool:
    """Whether an API key with `scopes` (empty: unrestricted) may do what `permission` names."""
    if permission == ACCOUNT:
        return False
    scopes = set(scopes)
    return not scopes or permission in scopes


def encode_scopes(scopes: Iterable[str]) -> str:
    """Scopes as stored: sorted, comma-separated ("" for unrestricted)."""
    return ",".join(sorted(set(scopes)))


def decode_scopes(text: str) -> frozenset[str]:
    return frozenset(s for s in (text or "").split(",") if s)


def describe_scopes(scopes: Iterable[str]) -> str:
    scopes = sorted(set(scopes))
    if not scopes or set(scopes) == set(SCOPES):
        return "unrestricted"
    return "read-only" if scopes == [READ] else "+".join(scopes) + " only"
