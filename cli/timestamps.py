"""The CLI's --start/--end values: a position in the audio, as milliseconds
(`90500`), seconds (`90.5s`) or a clock time (`1:30.5`, `0:01:30.500`),
turned into the milliseconds UploadVideo's start_ms/end_ms take."""
from __future__ import annotations

import re

import click

_CLOCK = re.compile(r"(?:(\d+):)?(\d+):(\d+(?:\.\d{1,3})?)")
_SECONDS = re.compile(r"(\d+(?:\.\d{1,3})?)s")


def to_ms(text: str) -> int:
    """Milliseconds in `text`; ValueError says what is accepted."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    if m := _SECONDS.fullmatch(text):
        return round(float(m.group(1)) * 1000)
    if m := _CLOCK.fullmatch(text):
        hours, minutes, seconds = int(m.group(1) or 0), int(m.group(2)), float(m.group(3))
        if (m.group(1) is not None and minutes >= 60) or seconds >= 60:
            raise ValueError(f"{text!r}: minutes and seconds go up to 59")
        return (hours * 3600 + minutes * 60) * 1000 + round(seconds * 1000)
    raise ValueError(f"{text!r} is no time: give milliseconds (90500), seconds (90.5s) "
                     "or h:mm:ss.mmm (0:01:30.5)")


class Position(click.ParamType):
    """click's type for --start and --end."""

    name = "time"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        try:
            return to_ms(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)
