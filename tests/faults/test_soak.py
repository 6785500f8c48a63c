"""A short `make soak` (bench/soak.py) in every test run: 30 jobs from 6
clients, gRPC and REST, two thirds of them converted while they upload, while
converter workers are killed and MongoDB and RabbitMQ connections cut at
random. Every job ends DONE, with one MP3."""
from __future__ import annotations

import pytest

from bench import soak

pytestmark = pytest.mark.slow


def test_short_soak_loses_nothing(tmp_path):
    notes: list[str] = []
    result = soak.run(jobs=30, clients=6, seed=20261124, fault_every_s=1.0, think_s=2.5,
                      fault_window_s=120, settle_s=120, log_dir=tmp_path, say=notes.append)
    line = result.summary_line()
    print(line)
    report = "\n".join([line, *notes, f"logs: {tmp_path}"])
    assert result.jobs == 30, report
    assert 0 < result.streamed < result.jobs, report  # both paths were taken
    assert result.upload_errors == 0, report
    assert result.lost == 0, report
    assert result.duplicated == 0, report
    assert result.orphan_chunks == 0, report
    assert result.done == 30, report
    # Every kind of fault happened at least once.
    assert all(result.faults[k] >= 1 for k in soak.FAULT_KINDS), report
