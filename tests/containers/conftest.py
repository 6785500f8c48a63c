"""Tests against the containers: the images, the compose stack, and the
Kubernetes overlay under podman kube play, each brought up and torn down by
the very commands docs/operations.md gives (the blocks marked
`<!-- tested: NAME ... -->`), so the docs are what ran.

They build images and start containers (minutes), so they run only when
asked for with the marker: `make test-containers` (pytest -m containers),
which `make test` runs after the rest. Self-contained: nothing here uses
the suite's mesh fixtures (tests/conftest.py); the clients and test media
come from testkit.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from container_kit import TIMINGS

from testkit.media import make_media


def pytest_collection_modifyitems(config, items):
    if "containers" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="builds images and runs containers: make test-containers")
    for item in items:
        if "containers" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("documented commands (seconds)")
        for what, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:7.1f}  {what}")


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """A 5-second H.264 + 440 Hz AAC video (the README's demo), and a
    10-minute audio track, long enough to be caught converting."""
    d = tmp_path_factory.mktemp("media")
    return {
        "video": Path(make_media(d / "holiday.mp4", video_codec="h264", audio_codec="aac", duration=5.0)),
        "long": Path(make_media(d / "long.m4a", video_codec=None, audio_codec="aac", duration=600.0)),
    }
