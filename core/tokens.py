"""JWT access tokens: signed by auth with an Ed25519 private key (EdDSA), verified
in-process by every other service against auth's published public keys (JWKS).

No shared secret: only auth holds private keys (auth/keys.py); verifiers get
public keys by `kid` from a lookup (gateway/jwks.py). Claims: sub (user id),
email, iat, nbf, exp, iss, aud, and sid (the login session, auth/sessions.py)
when the token came from Login or RefreshSession; header: alg EdDSA, kid.

Verification pins the algorithm (EdDSA only, whatever the header says), takes
the key only from the lookup by a well-formed kid (never from a URL, path or
embedded key in the token) and checks exp, nbf, iat, iss and aud with a small
leeway. InvalidToken's text says exactly what failed: for logs only. Callers
answer every failure with the one PUBLIC_MESSAGE.
"""
from __future__ import annotations

import base64
import dataclasses
import re
import time
from collections.abc import Callable

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ISSUER = "video2mp3-auth"
AUDIENCE = "video2mp3"
ALGORITHM = "EdDSA"
# Clock skew tolerated between auth and the verifiers.
LEEWAY_S = 30
# kids we issue (auth/keys.py): short, URL- and file-name-safe.
KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# The one answer to every verification failure: says what to do, not what failed.
PUBLIC_MESSAGE = "your access token is not valid (expired, revoked or malformed); log in again"
REQUIRED_CLAIMS = ["sub", "email", "iat", "nbf", "exp", "iss", "aud"]

KeyLookup = Callable[[str], "Ed25519PublicKey | None"]


class InvalidToken(Exception):
    """The token is missing, malformed, expired or not signed by us. str() says which (log it; don't send it)."""


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who makes a call. Equal when the user is: the rest says with what credential."""

    user_id: str
    email: str
    # An access token's login session ("" for a token made without one).
    session_id: str = dataclasses.field(default="", compare=False)
    # An API key's id and scopes (core/credentials.py); "" for an access token.
    api_key_id: str = dataclasses.field(default="", compare=False)
    scopes: frozenset[str] = dataclasses.field(default=frozenset(), compare=False)

    @property
    def is_api_key(self) -> bool:
        return bool(self.api_key_id)


def issue(
    private_key: Ed25519PrivateKey,
    kid: str,
    user_id: str,
    email: str,
    ttl_seconds: int,
    now: float | None = None,
    session_id: str = "",
) -> str:
    iat = int(now if now is not None else time.time())
    claims: dict[str, str | int] = {
        "sub": str(user_id),
        "email": email,
        "iat": iat,
        "nbf": iat,
        "exp": iat + ttl_seconds,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    if session_id:
        claims["sid"] = session_id
    return jwt.encode(claims, private_key, algorithm=ALGORITHM, headers={"kid": kid})


def unverified_kid(token: str) -> str:
    """The header's kid, if the header is ours in shape (alg EdDSA, a well-formed kid)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as e:
        raise InvalidToken(f"malformed token: {e}") from None
    if header.get("alg") != ALGORITHM:
        raise InvalidToken(f"algorithm {header.get('alg')!r} is not {ALGORITHM}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not KID_RE.match(kid):
        raise InvalidToken(f"kid {kid!r} is missing or not one we issue")
    return kid


def verify(token: str, lookup: KeyLookup) -> Caller:
    kid = unverified_kid(token)
    key = lookup(kid)
    if key is None:
        raise InvalidToken(f"unknown kid {kid!r}")
    if not isinstance(key, Ed25519PublicKey):  # never let a key's type choose the algorithm
        raise InvalidToken(f"key {kid!r} is not an Ed25519 public key")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=LEEWAY_S,
            options={"require": REQUIRED_CLAIMS, "verify_signature": True, "verify_exp": True,
                     "verify_nbf": True, "verify_iat": True, "verify_aud": True, "verify_iss": True,
                     "strict_aud": True},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("expired") from None
    except jwt.ImmatureSignatureError:
        raise InvalidToken("not valid yet (nbf/iat in the future)") from None
    except jwt.InvalidSignatureError:
        raise InvalidToken(f"bad signature for kid {kid!r}") from None
    except jwt.InvalidTokenError as e:
        raise InvalidToken(f"{type(e).__name__}: {e}") from None
    sub, email = claims["sub"], claims["email"]
    if not isinstance(sub, str) or not sub or not isinstance(email, str):
        raise InvalidToken("sub/email claims are not strings")
    sid = claims.get("sid", "")
    if not isinstance(sid, str):
        raise InvalidToken("the sid claim is not a string")
    return Caller(user_id=sub, email=email, session_id=sid)


def bearer_from_metadata(metadata) -> str:
    """The token from `authorization: Bearer <token>` gRPC metadata (Envoy forwards the HTTP header)."""
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise InvalidToken("authorization header is not 'Bearer <token>'")
            return token.strip()
    raise InvalidToken("no authorization header")


# -- JWK (RFC 8037: OKP / Ed25519) ---------------------------------------------------

def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(kid: str, public_key: Ed25519PublicKey) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": kid, "alg": ALGORITHM, "use": "sig"}


def key_from_jwk(jwk: dict) -> Ed25519PublicKey | None:
    """The Ed25519 public key of a JWK, or None for anything else (other types, private parts)."""
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or "d" in jwk:
        return None
    if jwk.get("alg", ALGORITHM) != ALGORITHM or jwk.get("use", "sig") != "sig":
        return None
    x = jwk.get("x")
    if not isinstance(x, str):
        return None
    try:
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return None
