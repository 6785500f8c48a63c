"""Checks an upload's first message: its conversion options (the rules are
common/mp3_options.py's) and its file name."""
from __future__ import annotations

import unicodedata

from video2mp3.media.v1 import media_pb2

from common import mp3_options
from common.errors import InvalidArgument, Reason

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
