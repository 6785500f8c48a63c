"""Quotas per user and limits per job, as the gateway applies them to uploads.

Two quotas per user, both 0 for "no limit":

    storage   bytes held: videos not converted yet (and any VIDEO_RETENTION
              keeps) plus MP3s not expired; frees up as MP3s expire
              (MP3_RETENTION after their job completed) or jobs are deleted
    minutes   audio converted in the last 24 hours (domain/usage.py's ledger,
              a rolling window): frees up as conversions leave the window

Global defaults are settings (QuotaSettings); an administrator overrides
them per user in the `user_quotas` collection, keyed by the account's email
(`python -m video2mp3.gateway quota ...`, gateway/cli.py). They live here, not
with the users in MySQL: the gateway applies them to its own store and
converters, and reads them without another hop to auth.

An upload is checked (UploadCheck) when it starts (either quota used up:
RESOURCE_EXHAUSTED, reason QUOTA_EXCEEDED, 429 over REST), at every message
(the bytes so far against the storage left), and as soon as its bytes
declare its length (formats/durations.py: the first bytes of a faststart MP4
or a WAV, the last ones of an Ogg file, the boxes of an MP4 whose index comes
last): over the limit per job (domain/limits.py) it is refused with 413 over
REST (reason AUDIO_TOO_LONG or MP3_TOO_LARGE), over the minutes left with 429.
Minutes declared by jobs not converted yet count against the quota too, so a
burst of uploads cannot overshoot it. The converter enforces the limits per
job again while decoding, whatever the file declared; the quotas are the
gateway's alone (a job accepted is converted).

RetryInfo is given where waiting helps: when enough of the window, or enough
MP3s, will have gone for the refused upload to fit (frees_at).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence

from video2mp3.core.errors import Reason, ResourceExhausted
from video2mp3.core.settings import setting
from video2mp3.core.tokens import Caller
from video2mp3.domain import jobs, limits, mp3_options
from video2mp3.domain.limits import JobLimits, duration_text, size_text
from video2mp3.domain.retention import RetentionSettings
from video2mp3.domain.usage import WINDOW, MinutesLedger
from video2mp3.formats import durations
from video2mp3.formats.containers import Container, identify
from video2mp3.media.v1 import media_pb2
from video2mp3.telemetry import metrics

log = logging.getLogger(__name__)

COLLECTION = "user_quotas"


@dataclasses.dataclass(frozen=True)
class QuotaSettings:
    storage_mb: int = setting("QUOTA_STORAGE_MB", 5120, minimum=0, help=(
        "storage each user may hold (videos not converted yet plus MP3s not expired), MiB; 5 GiB by default, "
        "about a week of MP3s at the minutes quota; `0`: no limit. Per user: `python -m video2mp3.gateway quota`"))
    minutes_per_day: int = setting("QUOTA_MINUTES_PER_DAY", 600, minimum=0, help=(
        "audio minutes each user may convert in any 24 hours (10 hours by default); `0`: no limit. Per user: "
        "`python -m video2mp3.gateway quota`"))


@dataclasses.dataclass(frozen=True)
class Allowance:
    """One user's quotas: 0 means no limit."""
    storage_bytes: int
    minutes: float
    overridden: bool = False


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a user holds and converted, with when each frees up (for frees_at)."""
    storage_bytes: int
    # (when it goes, bytes): the MP3s that expire by themselves
    storage_leaving: list[tuple[dt.datetime, int]]
    converted_s: float
    # (when it leaves the window, seconds)
    minutes_leaving: list[tuple[dt.datetime, float]]
    # seconds declared by jobs not converted yet
    pending_s: float


# --- the arithmetic (pure: tests/unit/test_quotas.py) ------------------------------

def frees_at(leaving: Sequence[tuple[dt.datetime, float]], used: float, allowed: float,
             need: float = 0.0) -> dt.datetime | None:
    """When enough of `used` has left for `need` more to fit in `allowed`
    (with need 0: for used to fall under allowed). `leaving`: (when, amount),
    in any order. None: it fits now, or waiting alone never makes it fit."""
    if not over(used, allowed, need):
        return None
    gone = 0.0
    for when, amount in sorted(leaving):
        gone += amount
        if not over(used - gone, allowed, need):
            return when
    return None


def over(used: float, allowed: float, need: float = 0.0) -> bool:
    """Whether `need` more does not fit (need 0: whether nothing is left)."""
    if not allowed:
        return False
    return used + need > allowed if need > 0 else used >= allowed


def retry_after(when: dt.datetime | None, now: dt.datetime) -> float | None:
    return None if when is None else max(1.0, (when - now).total_seconds())


def _when(t: dt.datetime | None) -> str:
    return f"{t:%Y-%m-%d %H:%M} UTC" if t else ""


class QuotaExceeded(ResourceExhausted):
    """A quota per user is used up: RESOURCE_EXHAUSTED, 429 over REST."""

    def __init__(self, message: str, *, quota: str, used: float, allowed: float, free_time: dt.datetime | None,
                 now: dt.datetime):
        metrics.LIMIT_REFUSALS.labels(f"{quota}_quota", "upload").inc()
        super().__init__(message, reason=Reason.QUOTA_EXCEEDED, retry_after_s=retry_after(free_time, now),
                         metadata={"quota": quota, "used": round(used), "allowed": round(allowed),
                                   "free_time": _when(free_time)})


class JobLimitExceeded(ResourceExhausted):
    """A limit per job: RESOURCE_EXHAUSTED, 413 over REST (as UPLOAD_TOO_LARGE: waiting never helps)."""

    def __init__(self, message: str, *, reason: Reason, kind: str, limit: float):
        metrics.LIMIT_REFUSALS.labels(kind, "upload").inc()
        super().__init__(message, reason=reason, metadata={"limit": round(limit)},
                         trailers=[("x-http-status", "413")])


def storage_message(used: int, allowed: int, need: int, free_time: dt.datetime | None) -> str:
    text = f"storage quota exceeded: you hold {size_text(used)} of your {size_text(allowed)}"
    if need:
        text += f", and this upload would add {size_text(need)}"
    text += " (videos not converted yet and MP3s kept); "
    if free_time:
        text += f"enough frees up at {_when(free_time)} as your MP3s expire, or "
    return text + "delete jobs you no longer need (DELETE /v1/jobs/JOB, `video2mp3 delete JOB`)"


def minutes_message(converted_s: float, pending_s: float, allowed_s: float, need_s: float,
                    free_time: dt.datetime | None) -> str:
    text = (f"audio minutes quota exceeded: you converted {duration_text(converted_s)} in the last 24 hours "
            f"of the {duration_text(allowed_s)} allowed")
    if pending_s:
        text += f", and jobs waiting declare {duration_text(pending_s)} more"
    if need_s:
        text += f"; this upload declares {duration_text(need_s)}"
    if need_s > allowed_s:
        return text + "; that is more than the quota allows in a day: cut the video into parts"
    if free_time:
        return text + f"; enough frees up at {_when(free_time)}, as earlier conversions leave the 24-hour window"
    return text + "; try again once the jobs waiting are converted"


# --- reading it ------------------------------------------------------------------------

class Quotas:
    def __init__(self, db, job_store: jobs.JobStore, settings: QuotaSettings, job_limits: JobLimits,
                 retention: RetentionSettings):
        self.db = db
        self.overrides = db[COLLECTION]
        self.jobs = job_store
        self.ledger = MinutesLedger(db)
        self.settings = settings
        self.limits = job_limits
        self.retention = retention

    def ensure_indexes(self) -> None:
        self.ledger.ensure_indexes()

    def allowance(self, email: str) -> Allowance:
        doc = self.overrides.find_one({"_id": email.strip().lower()}) or {}
        storage_mb = doc.get("storage_mb", self.settings.storage_mb)
        minutes = doc.get("minutes_per_day", self.settings.minutes_per_day)
        return Allowance(int(storage_mb) * 2**20, float(minutes), overridden=bool(doc))

    def snapshot(self, user_id: str, now: dt.datetime) -> Snapshot:
        held, leaving, pending = 0, [], 0.0
        fields = {"video_fid": 1, "video_size": 1, "mp3_fid": 1, "mp3_size": 1, "state": 1, "mp3_expired": 1,
                  "complete_time": 1, "declared_seconds": 1}
        # With VIDEO_RETENTION=0 a final job's video is no longer held: the
        # converter announces the job's end first and deletes the video after.
        videos_go_at_end = self.retention.video_s == 0
        for d in self.jobs.c.find({"user_id": user_id, **jobs.LIVE}, fields):
            state = d.get("state")
            if d.get("video_fid") is not None and not (videos_go_at_end and state in jobs.FINAL_STATES):
                held += int(d.get("video_size") or 0)
            if state == jobs.DONE and d.get("mp3_fid") is not None and not d.get("mp3_expired"):
                size = int(d.get("mp3_size") or 0)
                held += size
                t = d.get("complete_time")
                if t is not None:
                    t = t if t.tzinfo else t.replace(tzinfo=dt.UTC)
                    leaving.append((t + dt.timedelta(seconds=self.retention.mp3_s), size))
            elif state in (jobs.QUEUED, jobs.PROCESSING):
                pending += float(d.get("declared_seconds") or 0)
        converted = self.ledger.since(user_id, now - WINDOW)
        return Snapshot(storage_bytes=held, storage_leaving=leaving,
                        converted_s=sum(s for _, s in converted),
                        minutes_leaving=[(t + WINDOW, s) for t, s in converted], pending_s=pending)

    def usage(self, caller: Caller) -> media_pb2.Usage:
        now = jobs.now()
        allowed, snap = self.allowance(caller.email), self.snapshot(caller.user_id, now)
        usage = media_pb2.Usage(
            storage_used_bytes=snap.storage_bytes, storage_limit_bytes=allowed.storage_bytes,
            minutes_used=round(snap.converted_s / 60, 2), minutes_pending=round(snap.pending_s / 60, 2),
            minutes_limit=allowed.minutes,
            max_audio_minutes_per_job=round(self.limits.max_audio_s / 60, 2),
            max_mp3_bytes_per_job=self.limits.max_mp3_bytes)
        storage_free = min((t for t, _ in snap.storage_leaving), default=None)
        minutes_free = min((t for t, _ in snap.minutes_leaving), default=None)
        if storage_free:
            usage.storage_free_time.FromDatetime(storage_free)
        if minutes_free:
            usage.minutes_free_time.FromDatetime(minutes_free)
        return usage

    def check(self, caller: Caller) -> UploadCheck:
        """The checks of one upload, with the caller's usage as it is now."""
        return UploadCheck(self, self.allowance(caller.email), self.snapshot(caller.user_id, jobs.now()))

    def start(self, caller: Caller) -> UploadCheck:
        """The checks of one upload, from its start (raises QuotaExceeded when either quota is used up)."""
        check = self.check(caller)
        check.at_start()
        return check


class UploadCheck:
    """One upload's quotas and limits; see the module doc."""

    def __init__(self, quotas: Quotas, allowed: Allowance, snap: Snapshot):
        self.limits = quotas.limits
        self.allowed, self.snap = allowed, snap
        self.declared_s: float | None = None
        self.is_mp4 = False  # its index may come last: gateway/uploads.py reads it back

    def at_start(self) -> None:
        now, a, s = jobs.now(), self.allowed, self.snap
        if over(s.storage_bytes, a.storage_bytes):
            free = frees_at(s.storage_leaving, s.storage_bytes, a.storage_bytes)
            raise QuotaExceeded(storage_message(s.storage_bytes, a.storage_bytes, 0, free), quota="storage",
                                used=s.storage_bytes, allowed=a.storage_bytes, free_time=free, now=now)
        allowed_s, used_s = a.minutes * 60, s.converted_s + s.pending_s
        if over(used_s, allowed_s):
            free = frees_at(s.minutes_leaving, used_s, allowed_s)
            raise QuotaExceeded(minutes_message(s.converted_s, s.pending_s, allowed_s, 0, free), quota="minutes",
                                used=used_s, allowed=allowed_s, free_time=free, now=now)

    def bytes_in(self, size: int) -> None:
        """The upload holds `size` bytes so far: they must fit in the storage left."""
        a, s = self.allowed, self.snap
        if over(s.storage_bytes, a.storage_bytes, size):
            now = jobs.now()
            free = frees_at(s.storage_leaving, s.storage_bytes, a.storage_bytes, size)
            raise QuotaExceeded(storage_message(s.storage_bytes, a.storage_bytes, size, free), quota="storage",
                                used=s.storage_bytes + size, allowed=a.storage_bytes, free_time=free, now=now)

    def head(self, head: bytes, options) -> None:
        self.is_mp4 = identify(head) is Container.MP4
        self.declared(durations.from_head(head), options)

    def tail(self, head: bytes, tail: bytes, options) -> None:
        if self.declared_s is None:
            self.declared(durations.from_tail(head, tail), options)

    def declared(self, seconds: float | None, options) -> None:
        """The file declares `seconds` of audio: the limits per job, then the minutes left."""
        seconds = mp3_options.output_seconds(seconds, options)  # a trim counts only what it keeps
        if seconds is None or self.declared_s is not None:
            return
        self.declared_s = seconds
        if seconds > self.limits.max_audio_s:
            raise JobLimitExceeded(limits.too_long(seconds, self.limits, declared=True),
                                   reason=Reason.AUDIO_TOO_LONG, kind="audio_duration", limit=self.limits.max_audio_s)
        mp3 = limits.mp3_bytes_at_least(seconds, options)
        if mp3 is not None and mp3 > self.limits.max_mp3_bytes:
            raise JobLimitExceeded(limits.too_big(mp3, self.limits, estimated=True),
                                   reason=Reason.MP3_TOO_LARGE, kind="mp3_size", limit=self.limits.max_mp3_bytes)
        a, s = self.allowed, self.snap
        allowed_s, used_s = a.minutes * 60, s.converted_s + s.pending_s
        if over(used_s, allowed_s, seconds):
            now = jobs.now()
            free = None if seconds > allowed_s else frees_at(s.minutes_leaving, used_s, allowed_s, seconds)
            raise QuotaExceeded(minutes_message(s.converted_s, s.pending_s, allowed_s, seconds, free),
                                quota="minutes", used=used_s + seconds, allowed=allowed_s, free_time=free, now=now)
