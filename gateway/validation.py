"""Checks what callers send: an upload's conversion options (the rules are
domain/mp3_options.py's), its file name and request_id, and ListJobs' filter."""
from __future__ import annotations

import re
import unicodedata

from video2mp3.core.errors import InvalidArgument, Reason
from video2mp3.domain import jobs, mp3_options
from video2mp3.media.v1 import media_pb2

MAX_FILENAME_CHARS = 255


def conversion_options(req: media_pb2.UploadVideoRequest) -> media_pb2.ConversionOptions:
    """The options the job carries, defaults filled in; InvalidArgument naming
    each bad field otherwise."""
    wrong = mp3_options.violations(req)
    if wrong:
        raise InvalidArgument("; ".join(d for _, d in wrong), reason=Reason.INVALID_OPTIONS,
                              violations=wrong)
    return mp3_options.with_defaults(req)


def filename(raw: str) -> str:
    """A label for the job and the MP3's title, never a path: the base name,
    any Unicode kept, control characters dropped, at most MAX_FILENAME_CHARS
    (cut before the extension, which is kept)."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) != "Cc").strip()
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        keep = f"{dot}{ext}" if stem and len(ext) <= 16 else ""
        name = name[:MAX_FILENAME_CHARS - len(keep)].rstrip() + keep
    return name or "upload"


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def request_id(raw: str) -> str:
    """'' (none given) or the UUID in lower case; InvalidArgument otherwise."""
    if not raw:
        return ""
    if not _UUID.fullmatch(raw):
        shown = raw if len(raw) <= 64 else raw[:64] + "..."
        message = (f"request_id must be a UUID such as 123e4567-e89b-42d3-a456-426614174000 "
                   f"(make one with uuidgen), got {shown!r}")
        raise InvalidArgument(message, reason=Reason.INVALID_REQUEST_ID,
                              violations=[("request_id", message)])
    return raw.lower()


MAX_FILTER_CHARS = 1000
_STATES = {media_pb2.JobState.Name(v): s for s, v in jobs.STATE_TO_PROTO.items()}
_TERM = re.compile(r"\s*state\s*=\s*(\w+)\s*")


def state_filter(text: str) -> list[jobs.State]:
    """ListJobs' filter (AIP-160 subset): `state = JOB_STATE_DONE`, terms
    joined by OR. The states asked for; empty for no filter."""
    if not text.strip():
        return []
    wanted: list[jobs.State] = []
    for term in re.split(r"\s+OR\s+", text.strip()) if len(text) <= MAX_FILTER_CHARS else [""]:
        m = _TERM.fullmatch(term)
        if not m or m.group(1) not in _STATES:
            message = ("filter must be `state = <JobState>`, several joined by OR, with JobState one of "
                       f"{', '.join(_STATES)}; e.g. `state = JOB_STATE_DONE`")
            raise InvalidArgument(message, reason=Reason.INVALID_FILTER, violations=[("filter", message)],
                                  metadata={"filter": text[:100]})
        wanted.append(_STATES[m.group(1)])
    return wanted
