"""Settings from the environment: one idiom for every service, the launcher and the tests.

A settings group is a frozen dataclass whose fields name their variable:

    @dataclasses.dataclass(frozen=True)
    class AuthConfig:
        port: int = setting("AUTH_PORT", 50051, minimum=1, help="gRPC port")
        mysql: MysqlSettings = group(MysqlSettings)

    cfg = load(AuthConfig)            # from os.environ
    cfg = load(AuthConfig, child_env) # or from the dict about to be handed to a child

Values are converted by the field's type (int, float, str, bool, Path, a
Literal of strings, or any of these | None); unset or blank means the default
(allow_empty=True keeps an empty value, e.g. an empty password); a bad value
exits with one line: "AUTH_PORT must be an integer, got 'x'". Each field's
`help` is its line in docs/configuration.md (`make docs` regenerates it).

Why not pydantic-settings: the launcher and the tests read the exact mapping
they are about to give a child process, while pydantic-settings reads
os.environ unless given custom sources; this module needs no dependency.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def setting(env: str, default: Any, *, minimum: float | None = None, allow_empty: bool = False,
            secret: bool = False, help: str = "", shown_default: str | None = None) -> Any:
    """A field read from environment variable `env`; a `secret` one stays out of repr().

    `help` says what the variable means, for an operator: docs/configuration.md
    is generated from it (`make docs`, tools/settings_doc.py). `shown_default`
    describes a default computed on this machine (e.g. "number of CPUs"), so
    the document does not depend on where it was generated."""
    return dataclasses.field(default=default, repr=not secret, metadata={
        "env": env, "minimum": minimum, "allow_empty": allow_empty, "help": help,
        "shown_default": shown_default})


def group(cls: type) -> Any:
    """A nested settings group, loaded from the same environment."""
    return dataclasses.field(default_factory=cls)


def _convert(name: str, kind: Any, raw: str) -> Any:
    text = raw.strip()
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        (kind,) = [a for a in args if a is not type(None)]
        return _convert(name, kind, raw)
    if typing.get_origin(kind) is Literal:
        for choice in args:  # case-insensitive, returned as declared
            if text.lower() == str(choice).lower():
                return choice
        raise SystemExit(f"{name} must be one of {', '.join(map(str, args))}, got {raw!r}")
    if kind is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise SystemExit(f"{name} must be true or false, got {raw!r}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise SystemExit(f"{name} must be {what}, got {raw!r}") from None
    if kind is pathlib.Path:
        return pathlib.Path(text)
    if kind is str:
        return raw  # unstripped: a key or password may hold any character
    raise TypeError(f"{name}: unsupported settings type {kind!r}")


def load(cls: type[T], env: Mapping[str, str] | None = None) -> T:
    """An instance of settings dataclass `cls` read from `env` (default os.environ)."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if "env" not in f.metadata:
            if isinstance(kind, type) and dataclasses.is_dataclass(kind):
                values[f.name] = load(kind, env)
            continue
        name, raw = f.metadata["env"], env.get(f.metadata["env"])
        if raw is None or (not raw.strip() and not f.metadata["allow_empty"]):
            continue  # the default
        value = _convert(name, kind, raw)
        minimum = f.metadata["minimum"]
        if minimum is not None and value < minimum:
            raise SystemExit(f"{name} must be at least {minimum}, got {raw!r}")
        values[f.name] = value
    return cls(**values)


def is_set(cls: type, field: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether `field` of `cls` is given (not blank) in `env`, where unset means something else."""
    env = os.environ if env is None else env
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}[field]
    return bool((env.get(meta["env"]) or "").strip())


def as_env(obj: Any, *fields: str) -> dict[str, str]:
    """`obj`'s `fields` (default: all direct ones) as the variables that would load them back."""
    out = {}
    for f in dataclasses.fields(obj):
        if "env" in f.metadata and (not fields or f.name in fields):
            out[f.metadata["env"]] = str(getattr(obj, f.name))
    return out


# ---------------------------------------------------------------- shared groups

@dataclasses.dataclass(frozen=True)
class MysqlSettings:
    """The auth service's user database; the tests create and drop databases with it."""
    host: str = setting("MYSQL_HOST", "127.0.0.1", help="MySQL (or MariaDB) server's host")
    port: int = setting("MYSQL_PORT", 3306, minimum=1, help="MySQL server's port")
    user: str = setting("MYSQL_USER", "root", help="MySQL account")
    password: str = setting("MYSQL_PASSWORD", "", allow_empty=True, secret=True, help="that account's password")
    db: str = setting(
        "MYSQL_DB",
        "video2mp3",
        help=(
            "database, created if absent (tables `users`, `login_failures`, `api_keys`, `sessions`, `refresh_tokens`)"
        ),
    )
    # Bounded so that an unreachable or hung MySQL fails an RPC in seconds.
    connect_timeout: float = setting("MYSQL_CONNECT_TIMEOUT", 3.0, minimum=0.1, help=(
        "seconds before an unreachable MySQL fails the RPC (UNAVAILABLE)"))
    read_timeout: float = setting("MYSQL_READ_TIMEOUT", 5.0, minimum=0.1, help=(
        "seconds before a hung MySQL read fails the RPC (UNAVAILABLE)"))
    write_timeout: float = setting("MYSQL_WRITE_TIMEOUT", 5.0, minimum=0.1, help=(
        "seconds before a hung MySQL write fails the RPC (UNAVAILABLE)"))
    pool_size: int = setting("MYSQL_POOL_SIZE", 8, minimum=1, help="pooled MySQL connections")


@dataclasses.dataclass(frozen=True)
class MongoSettings:
    uri: str = setting("MONGO_URI", "mongodb://127.0.0.1:27017/video2mp3", help=(
        "MongoDB: GridFS buckets `videos` and `mp3s`, collection `jobs`. `make run` starts an embedded SecantusDB "
        "(`MONGO_PORT`, `MONGO_DATA_DIR`) when it is unset"))
    # Bounded so an unreachable MongoDB fails an RPC in seconds, not minutes.
    timeout_ms: int = setting("MONGO_TIMEOUT_MS", 3000, help=(
        "milliseconds a MongoDB call waits for an unreachable server before failing (UNAVAILABLE)"))
    # Its default is localmesh/settings.py's; the guard is gateway/storage_space.py.
    data_dir: pathlib.Path | None = setting("MONGO_DATA_DIR", None, help=(  # noqa: RUF009 - a field specifier
        "the store's data folder when it is on this machine: `make run` keeps its embedded SecantusDB there "
        "(`./data/mongo` when unset) and the gateway checks its free space (`STORAGE_RESERVE_MB`); leave unset "
        "for a remote store"))


@dataclasses.dataclass(frozen=True)
class RabbitSettings:
    host: str = setting("RABBITMQ_HOST", "127.0.0.1", help="RabbitMQ's host")
    port: int = setting("RABBITMQ_PORT", 5672, help="RabbitMQ's AMQP port")
    user: str = setting("RABBITMQ_USER", "guest", help="RabbitMQ account")
    password: str = setting("RABBITMQ_PASSWORD", "guest", allow_empty=True, secret=True, help="that account's password")
    vhost: str = setting("RABBITMQ_VHOST", "/", help="RabbitMQ virtual host")
    queue: str = setting("QUEUE_NAME", "video", help="the job queue (dead letters go to `<name>.dead`)")
    heartbeat: int = setting("RABBITMQ_HEARTBEAT", 30, help="AMQP heartbeat, seconds")
    timeout_s: float = setting("RABBITMQ_TIMEOUT_S", 3.0, help=(
        "connect timeout, seconds; also how long an upload waits for RabbitMQ's confirm before leaving the job to "
        "the outbox"))


@dataclasses.dataclass(frozen=True)
class AuthEndpoint:
    """Where auth is reached: by the gateway's health check and by Envoy's route."""
    addr: str = setting("AUTH_ADDR", "127.0.0.1:50051", help=(
        "where auth is reached, `host:port`: the gateway's health check, public keys and user checks, and Envoy's "
        "route"))


@dataclasses.dataclass(frozen=True)
class MediaEndpoint:
    """Where the Media service (the gateway) is reached: by Envoy's route and by
    auth, which asks it to delete a user's data (DeleteMe)."""
    addr: str = setting("MEDIA_ADDR", "127.0.0.1:50052", help=(
        "where the Media service (the gateway) is reached, `host:port`: Envoy's route, and auth, which asks it to "
        "delete a deleted account's data"))


@dataclasses.dataclass(frozen=True)
class Environment:
    """What kind of deployment this is; compose and Kubernetes set production
    on every service. In production auth refuses to start without signing keys."""
    name: Literal["development", "production"] = setting("VIDEO2MP3_ENV", "development", help=(
        "`production` (compose and Kubernetes set it): auth refuses to start without signing keys in "
        "`AUTH_KEYS_DIR`; `development`: it signs with an ephemeral key and says so"))

    @property
    def production(self) -> bool:
        return self.name == "production"
