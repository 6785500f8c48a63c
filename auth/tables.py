"""Every MySQL table of the auth service, created with `users` by UserRepository.ensure_schema,
and the ones whose rows go with their user when the account is deleted."""

from __future__ import annotations

from video2mp3.auth import api_keys, login_limits, sessions
from video2mp3.auth.users import UserRepository
from video2mp3.core.settings import MysqlSettings

EXTRA_TABLES = (login_limits.CREATE_TABLE, api_keys.CREATE_TABLE, *sessions.CREATE_TABLES)
OWNED_BY_USER = (api_keys.TABLE, *sessions.TABLES)


def repository(cfg: MysqlSettings) -> UserRepository:
    """The users repository with every other auth table in its schema."""
    return UserRepository(cfg, extra_tables=EXTRA_TABLES, owned_tables=OWNED_BY_USER)
