"""The CLI's --start/--end forms (cli/timestamps.py)."""
from __future__ import annotations

import pytest

from video2mp3.cli.timestamps import to_ms


@pytest.mark.parametrize(("text", "ms"), [
    ("0", 0), ("90500", 90500), ("90.5s", 90500), ("2s", 2000), ("1:30", 90000), ("1:30.5", 90500),
    ("0:01:30.250", 90250), ("1:00:00", 3_600_000), ("12:00.001", 720001),
])
def test_forms(text, ms):
    assert to_ms(text) == ms


@pytest.mark.parametrize("text", ["", "-5", "1.5", "soon", "1:60", "1:75:00", "1:2:3:4", "1.2345s"])
def test_refused(text):
    with pytest.raises(ValueError, match=r"no time|up to 59"):
        to_ms(text)
