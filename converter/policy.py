"""What the worker does with a task, decided without touching anything.

Pure functions and types (no pika, no pymongo), so the retry and dead-letter
rules are testable alone (tests/unit/test_policy.py):

- every way a task ends is one Ending: the delivery's outcome, how the
  conversion is counted and the worker's log line; a task that stops short
  of DONE or FAILED raises a TaskStop whose class carries its Ending, and any
  other error is UNEXPECTED (ending_for);
- a processed task is ACKed once its job is final, REQUEUEd (spending one of
  the queue's MAX_DELIVERIES) after an unexpected error, or HANDed BACK as a
  fresh copy when we are shutting down, so restarts never look like crashes;
- while storage is unavailable the task is retried in place, unacked;
- a dead letter is revived if its job was not really attempted MAX_DELIVERIES
  times (the deliveries went on lost connections), at most MAX_REVIVALS
  times; else its job fails with crashed_reason().
"""
from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

# A dead letter queued again carries how often it was, in this header.
REVIVED_HEADER = "x-video2mp3-revived"
MAX_REVIVALS = 3


def overlap(mode: str, cpus: int, workers: int, others_busy: int, waiting: int) -> bool:
    """Whether a conversion uses more than one core (CONVERTER_OVERLAP):
    decode and write on helper threads (converter/transcode.py) and encoders()
    LAME encoders, each on a segment of the track (converter/split_encode.py).
    "auto": only when it is the only work in sight: no other worker
    converting and no task waiting in the queue, and there is an idle
    worker's core to borrow (CONVERTER_WORKERS is the converter's share of
    the machine: one worker means one core, the rest left to the API, the
    store and uploads). That is when a user waits on one job and a core would
    idle; the job then finishes in ~0.6 of the time for ~5 % more CPU. With a
    backlog, throughput per CPU second counts: each job runs on one thread,
    and the spare core goes to the next job or to the uploads that made the
    backlog. Asked at a job's start and, for a job that got the cores, again
    before each segment with what is in sight then."""
    if mode != "auto":
        return mode == "on"
    return cpus > 1 and workers > 1 and others_busy == 0 and waiting == 0


def encoders(mode: str, cpus: int, workers: int) -> int:
    """LAME encoders for a conversion that overlap() lets use more than one
    core: one per core of the converter's share (every CPU when pinned on)."""
    return max(1, cpus if mode == "on" else min(cpus, workers))


class Outcome(enum.Enum):
    """How the broker side settles a delivery."""
    ACK = "ack"              # done with it: the job is final, or the message is unusable
    REQUEUE = "requeue"      # nack with requeue: counts against the delivery limit
    HAND_BACK = "hand back"  # a confirmed fresh copy, then ack: no delivery spent


# --- How a task ends -----------------------------------------------------------

@dataclass(frozen=True)
class Ending:
    """How a task ends: what becomes of its delivery, how its conversion is
    counted (video2mp3_conversions_total's outcome) and the worker's log line,
    a str.format template of {job}, {error} and the caller's fields."""
    outcome: Outcome | None          # None: retried in place after a pause (unacked, nothing spent)
    counted_as: str | None = None    # None: not counted
    message: str | None = None       # None: no line
    level: int = logging.INFO
    step: str | None = None          # the line's `step` field
    traceback: bool = False


DONE = Ending(Outcome.ACK, "done", "job {job} DONE: {bytes} bytes, {audio:.2f}s of audio in {seconds:.2f}s",
              step="done")
FAILED = Ending(Outcome.ACK, "failed", "job {job} FAILED: {error}", step="failed")
SUPERSEDED = Ending(Outcome.ACK, "superseded", "job {job} was finished by another attempt; discarding this MP3")
# A bug or a decoder crash we did not foresee: let the queue's delivery
# limit dead-letter a file that keeps doing it.
UNEXPECTED = Ending(Outcome.REQUEUE, "error", "job {job}: unexpected error; requeueing", logging.ERROR,
                    traceback=True)


class TaskStop(Exception):
    """A task that stops short of DONE or FAILED; the class says how (`ending`)."""
    ending: ClassVar[Ending]


class NoSuchJob(TaskStop):
    """The task's job is gone (deleted) before its conversion started."""
    ending = Ending(Outcome.ACK, "deleted", "job {job} no longer exists (deleted); task acked")


class AlreadyFinal(TaskStop):
    """The job is DONE or FAILED already: a duplicate task."""
    ending = Ending(Outcome.ACK, "duplicate", "job {job} already {error.state}; duplicate task acked")

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


class ShuttingDown(TaskStop):
    """We are stopping while waiting (for a duplicate's lease, for MongoDB): hand the task back."""
    ending = Ending(Outcome.HAND_BACK, "interrupted")


class Cancelled(TaskStop):
    """Shutdown deadline reached mid-conversion: hand the task back."""
    ending = Ending(Outcome.HAND_BACK, "interrupted", "job {job} interrupted by shutdown; handed back")


class LostLease(TaskStop):
    """Our lease ran out (we stalled) and another worker took the job over."""
    ending = Ending(Outcome.ACK, "superseded", "job {job} was taken over by another worker; this attempt stops",
                    logging.WARNING)


class JobGone(TaskStop):
    """The job was deleted (DeleteJob) while queued or converting: stop, keep nothing."""
    ending = Ending(Outcome.ACK, "deleted",
                    "job {job} was deleted; its conversion stopped and its MP3 was removed")


class UploadStalled(JobGone):
    """The job's upload stopped without ending (its gateway died): the job was
    handed back (JobStore.abandon_upload); stop like a deleted job, keep nothing."""
    ending = Ending(Outcome.ACK, "deleted",
                    "job {job}: its upload stopped; its conversion stopped and its MP3 was removed")


class SpoolYielded(JobGone):
    """A worker copying an upload as it arrived (converter/spool.py) handed the
    job back for tasks waiting behind it (JobStore.yield_upload): the upload's
    end publishes it again; this attempt keeps nothing."""
    ending = Ending(Outcome.ACK, "yielded",
                    "job {job}: handed back while its upload arrives, for the tasks waiting behind it")


class LeftExpress(TaskStop):
    """An express conversion used more than EXPRESS_CPU_S: its job was given
    back for the normal lane (JobStore.leave_express) and its MP3 deleted; the
    gateway's fair dispatcher publishes it again in its user's turn."""
    ending = Ending(Outcome.ACK, "left_express",
                    "job {job} is too long for the express lane; handed to the normal queue")


class StorageUnavailable(TaskStop):
    """MongoDB (jobs or GridFS) cannot be reached right now."""
    ending = Ending(None, None, "job {job}: storage unavailable ({error}); retrying", logging.WARNING)


def ending_for(error: BaseException) -> Ending:
    """How a task whose processing raised `error` ends."""
    return error.ending if isinstance(error, TaskStop) else UNEXPECTED


def outcome_for(error: BaseException) -> Outcome | None:
    """The outcome of a task whose processing raised `error`; None means
    retry in place after a pause (the delivery stays unacked, nothing spent)."""
    return ending_for(error).outcome


# --- Dead letters --------------------------------------------------------------

class DeadLetter(enum.Enum):
    REVIVE = "revive"  # queue a copy with revivals + 1 in REVIVED_HEADER
    FAIL = "fail"      # mark the job FAILED (if it is not final) and delete its leftover MP3s
    DROP = "drop"      # no job, or DONE: nothing to do


def revivals(headers: Mapping | None) -> int:
    """How many times a dead letter was queued again already."""
    try:
        return max(0, int((headers or {}).get(REVIVED_HEADER, 0)))
    except (TypeError, ValueError):
        return MAX_REVIVALS  # a header we did not write: do not loop on it


def revived_headers(count: int) -> dict:
    return {REVIVED_HEADER: count + 1}


def dead_letter(state: str | None, attempts: int, revived: int, *,
                max_deliveries: int, max_revivals: int = MAX_REVIVALS) -> DeadLetter:
    """For a task dead-lettered after max_deliveries deliveries: `state` and
    `attempts` of its job (state None: no such job), `revived` from revivals()."""
    if state is None or state == "DONE":
        return DeadLetter.DROP
    if state != "FAILED" and attempts < max_deliveries and revived < max_revivals:
        return DeadLetter.REVIVE
    return DeadLetter.FAIL


def crashed_reason(max_deliveries: int) -> str:
    return (f"the converter stopped unexpectedly on this file {max_deliveries} times; "
            "it may be corrupt or unsupported")
