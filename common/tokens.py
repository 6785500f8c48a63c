"""JWT access tokens: issued by auth, verified in-process by every other service.

HS256 with the shared SECRET_KEY. Claims: sub (user id), email, iat, exp, iss, aud.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import jwt

from common.settings import setting

ISSUER = "video2mp3-auth"
AUDIENCE = "video2mp3"
ALGORITHM = "HS256"
# Used by every service when SECRET_KEY is unset, so a local mesh works out of
# the box; each service logs a warning when it falls back to it.
DEV_SECRET_KEY = "video2mp3-insecure-dev-secret-set-SECRET_KEY"


@dataclasses.dataclass(frozen=True)
class TokenSettings:
    """The signing key, shared by auth (signs) and the gateway (verifies)."""
    secret_key: str = setting("SECRET_KEY", DEV_SECRET_KEY, secret=True)

    @property
    def secret_key_is_default(self) -> bool:
        return self.secret_key == DEV_SECRET_KEY

    def warn_if_insecure(self, log: logging.Logger) -> None:
        """The one warning about a weak key, logged at every service's start."""
        if self.secret_key_is_default:
            log.warning("SECRET_KEY is not set: using the insecure development key")
        elif len(self.secret_key.encode()) < 32:
            log.warning("SECRET_KEY is shorter than 32 bytes; HS256 keys should be at least 32")


class InvalidToken(Exception):
    """The token is missing, malformed, expired or not signed by us. str() says which."""


@dataclasses.dataclass(frozen=True)
class Caller:
    user_id: str
    email: str


def issue(secret: str, user_id: str, email: str, ttl_seconds: int, now: float | None = None) -> str:
    iat = int(now if now is not None else time.time())
    claims = {
        "sub": str(user_id),
        "email": email,
        "iat": iat,
        "exp": iat + ttl_seconds,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str) -> Caller:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["sub", "email", "iat", "exp", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("access token has expired; log in again") from None
    except jwt.InvalidSignatureError:
        raise InvalidToken("access token signature is not valid") from None
    except jwt.DecodeError:
        raise InvalidToken("access token is malformed") from None
    except jwt.InvalidTokenError as e:
        raise InvalidToken(f"access token is not valid: {e}") from None
    return Caller(user_id=claims["sub"], email=claims["email"])


def bearer_from_metadata(metadata) -> str:
    """The token from `authorization: Bearer <token>` gRPC metadata (Envoy forwards the HTTP header)."""
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise InvalidToken("authorization header must be 'Bearer <token>'")
            return token.strip()
    raise InvalidToken("missing authorization header; send 'Authorization: Bearer <token>'")
