"""converter/policy.py alone: what becomes of a delivery, with no broker or
database. Also checks that the policy stays pure (no pika, no pymongo)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from video2mp3.converter import policy
from video2mp3.converter.policy import (
    MAX_REVIVALS,
    REVIVED_HEADER,
    Cancelled,
    DeadLetter,
    LostLease,
    Outcome,
    StorageUnavailable,
)

MAX_DELIVERIES = 3


@pytest.mark.parametrize(("error", "outcome"), [
    (Cancelled(), Outcome.HAND_BACK),         # shutdown: a fresh copy, no delivery spent
    (LostLease(), Outcome.ACK),               # another attempt owns the job now
    (StorageUnavailable("down"), None),       # retried in place, unacked
    (RuntimeError("bug"), Outcome.REQUEUE),   # counts towards dead-lettering
    (MemoryError(), Outcome.REQUEUE),
])
def test_outcome_for_each_error(error, outcome):
    assert policy.outcome_for(error) is outcome


def dead(state, attempts=0, revived=0):
    return policy.dead_letter(state, attempts, revived, max_deliveries=MAX_DELIVERIES)


def test_a_dead_letter_never_really_attempted_is_revived():
    assert dead("QUEUED", attempts=0) is DeadLetter.REVIVE
    assert dead("PROCESSING", attempts=MAX_DELIVERIES - 1) is DeadLetter.REVIVE
    assert dead("QUEUED", revived=MAX_REVIVALS - 1) is DeadLetter.REVIVE


def test_a_dead_letter_that_crashed_its_workers_fails_the_job():
    assert dead("PROCESSING", attempts=MAX_DELIVERIES) is DeadLetter.FAIL
    assert dead("QUEUED", attempts=MAX_DELIVERIES + 1) is DeadLetter.FAIL


def test_revivals_are_bounded():
    assert dead("QUEUED", attempts=0, revived=MAX_REVIVALS) is DeadLetter.FAIL
    assert policy.dead_letter("QUEUED", 0, 1, max_deliveries=MAX_DELIVERIES,
                              max_revivals=1) is DeadLetter.FAIL


def test_a_final_or_missing_job_is_not_revived():
    assert dead(None) is DeadLetter.DROP
    assert dead("DONE") is DeadLetter.DROP
    # FAILED: its leftovers may still need deleting, so it goes the FAIL way (idempotent).
    assert dead("FAILED") is DeadLetter.FAIL


def test_revival_headers_count_up():
    assert policy.revivals(None) == 0
    assert policy.revivals({}) == 0
    assert policy.revivals({REVIVED_HEADER: 2}) == 2
    assert policy.revived_headers(2) == {REVIVED_HEADER: 3}
    # A header we did not write never makes a dead letter loop.
    assert policy.revivals({REVIVED_HEADER: "x"}) == MAX_REVIVALS


def test_crashed_reason_names_the_count():
    reason = policy.crashed_reason(MAX_DELIVERIES)
    assert "stopped unexpectedly" in reason
    assert f"{MAX_DELIVERIES} times" in reason
    assert "corrupt or unsupported" in reason


def test_outcomes_are_an_enum():
    assert {o.value for o in Outcome} == {"ack", "requeue", "hand back"}


def test_policy_imports_no_broker_or_database():
    code = ("import sys, video2mp3.converter.policy; "
            "print([m for m in ('pika', 'pymongo', 'bson') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_overlap_only_when_a_job_is_alone_and_a_core_is_spare():
    assert policy.overlap("auto", cpus=2, workers=2, others_busy=0, waiting=0)
    assert not policy.overlap("auto", cpus=2, workers=2, others_busy=1, waiting=0)  # cores taken
    assert not policy.overlap("auto", cpus=2, workers=2, others_busy=0, waiting=3)  # a backlog: throughput
    assert not policy.overlap("auto", cpus=1, workers=2, others_busy=0, waiting=0)
    # One worker is the converter's share of the machine: one core.
    assert not policy.overlap("auto", cpus=2, workers=1, others_busy=0, waiting=0)
    assert policy.overlap("on", cpus=1, workers=1, others_busy=5, waiting=9)
    assert not policy.overlap("off", cpus=8, workers=8, others_busy=0, waiting=0)


def test_a_lone_job_encodes_on_the_converters_share_of_the_cores():
    assert policy.encoders("auto", cpus=2, workers=2) == 2
    assert policy.encoders("auto", cpus=8, workers=3) == 3   # the idle workers' cores, no more
    assert policy.encoders("auto", cpus=2, workers=6) == 2   # no more than there are
    assert policy.encoders("on", cpus=4, workers=1) == 4     # pinned on: every CPU


def test_every_ending_is_counted_and_worded_once():
    """Each way a task ends says its outcome, its conversions_total label and
    its log line in one place (policy.Ending); the worker only picks one."""
    stops = [policy.NoSuchJob(), policy.AlreadyFinal("DONE"), policy.ShuttingDown(), Cancelled(), LostLease(),
             policy.JobGone(), policy.UploadStalled(), StorageUnavailable("down")]
    endings = [policy.ending_for(e) for e in stops] + [policy.DONE, policy.FAILED, policy.SUPERSEDED,
                                                       policy.ending_for(RuntimeError("bug"))]
    labels = {e.counted_as for e in endings if e.counted_as}
    assert labels == {"done", "failed", "superseded", "duplicate", "interrupted", "error", "deleted"}
    assert policy.ending_for(policy.UploadStalled()) is not policy.ending_for(policy.JobGone())
    assert policy.ending_for(RuntimeError()) is policy.UNEXPECTED
    assert policy.UNEXPECTED.traceback
    lines = {e.message.format(job="j1", error=err, bytes=1, audio=1.0, seconds=1.0)
             for e, err in zip(endings, [*stops, None, ValueError("bad"), None, None], strict=True) if e.message}
    assert "job j1 already DONE; duplicate task acked" in lines
    assert "job j1 no longer exists (deleted); task acked" in lines
    assert "job j1: storage unavailable (down); retrying" in lines
    assert "job j1 FAILED: bad" in lines
