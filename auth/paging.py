"""AIP-158 pages for auth's lists (API keys, sessions): newest first, resumed after the last item shown.

A page token is the last item's (created_at, id), base64url: opaque to clients,
stable while items come and go, one indexed range scan per page.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt

from video2mp3.core.errors import InvalidArgument, Reason

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 100
Cursor = tuple[dt.datetime, str]


def _invalid(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(message, reason=Reason.INVALID_PAGE, violations=[(field, message)])


def page_size(requested: int) -> int:
    if requested < 0:
        raise _invalid(
            "page_size", f"page_size must not be negative (0 means {DEFAULT_PAGE_SIZE}; at most {MAX_PAGE_SIZE})"
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode(created_at: dt.datetime, item_id: str) -> str:
    text = f"{created_at.astimezone(dt.UTC).replace(tzinfo=None).isoformat()}|{item_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode(token: str) -> Cursor | None:
    """The cursor of a page token; None for no token. InvalidArgument if it is not one of ours."""
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        when, _, item_id = text.partition("|")
        created = dt.datetime.fromisoformat(when)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _invalid("page_token", "page_token is not one this server gave out; start again without it") from None
    if not item_id:
        raise _invalid("page_token", "page_token is not one this server gave out; start again without it")
    return created, item_id


def after_clause(cursor: Cursor | None) -> tuple[str, tuple]:
    """SQL (prefixed " AND ") and parameters for the items after `cursor`, newest first."""
    if cursor is None:
        return "", ()
    created, item_id = cursor
    return " AND (created_at < %s OR (created_at = %s AND id < %s))", (created, created, item_id)
