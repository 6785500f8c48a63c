"""Connection settings shared by the gateway and the converter, from the seed's
environment variable names. Each service's own config.py composes these."""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping


def _number(kind, what: str, name: str, default, env: Mapping[str, str], minimum):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        raise SystemExit(f"{name} must be {what}, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def env_int(name: str, default: int, env: Mapping[str, str] = os.environ, minimum: int | None = None) -> int:
    return _number(int, "an integer", name, default, env, minimum)


def env_float(name: str, default: float, env: Mapping[str, str] = os.environ,
              minimum: float | None = None) -> float:
    return _number(float, "a number", name, default, env, minimum)


def env_str(name: str, default: str, env: Mapping[str, str] = os.environ) -> str:
    return env.get(name) or default


@dataclasses.dataclass(frozen=True)
class MongoSettings:
    uri: str
    # Bounded so an unreachable MongoDB fails an RPC in seconds, not minutes.
    timeout_ms: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "MongoSettings":
        return cls(
            uri=env_str("MONGO_URI", "mongodb://127.0.0.1:27017/video2mp3", env),
            timeout_ms=env_int("MONGO_TIMEOUT_MS", 3000, env),
        )


@dataclasses.dataclass(frozen=True)
class RabbitSettings:
    host: str
    port: int
    user: str
    password: str
    vhost: str
    queue: str
    heartbeat: int
    timeout_s: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "RabbitSettings":
        return cls(
            host=env_str("RABBITMQ_HOST", "127.0.0.1", env),
            port=env_int("RABBITMQ_PORT", 5672, env),
            user=env_str("RABBITMQ_USER", "guest", env),
            password=env.get("RABBITMQ_PASSWORD", "guest"),
            vhost=env_str("RABBITMQ_VHOST", "/", env),
            queue=env_str("QUEUE_NAME", "video", env),
            heartbeat=env_int("RABBITMQ_HEARTBEAT", 30, env),
            timeout_s=env_float("RABBITMQ_TIMEOUT_S", 3.0, env),
        )
