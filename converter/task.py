"""One task: its job's video in GridFS to one MP3, step by step.

    Task.run            to the end, retried in place while MongoDB is unreachable
      take_lease        the job, leased to this attempt, which records its MP3's id
      convert_audio     read_video -> transcode() -> this attempt's MP3, written as it is made
      store_mp3         the info frame written over its placeholder in the stored MP3
      finish_job        DONE (or FAILED: fail_job); the video goes (domain/retention.py)

A Task lives for one delivery and holds its state: the job as leased, this
attempt's MP3, what was read, the lease's progress writes. What outlives it
(settings, MongoDB, the shutdown events) is the Worker's (converter/worker.py).
How each way of ending counts, logs and settles the delivery is
converter/policy.py's table; the steps only say which one it is.

Exactly one MP3 per job: each attempt takes a lease on the job and writes a
new GridFS id that is recorded on the job *before* writing; the next attempt
deletes leftovers of crashed ones, and DONE is set only by the attempt that
holds the lease (renewed as progress is made), so a losing duplicate deletes
its own MP3. A job deleted meanwhile (DeleteJob) fails that renewal too:
the attempt stops within PROGRESS_EVERY_S and deletes what it wrote.

A job whose upload is still arriving (`uploading`, gateway/early_jobs.py) is
read as it grows (storage/gridfs_growing.py); only a conversion of the
complete file may end it FAILED (convert_audio). One whose file has its index
at the end (`spool`) is copied to local disk as it arrives and converted from
the copy, or handed back for the tasks waiting behind it (converter/spool.py).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import pymongo.errors
from bson import ObjectId
from bson.errors import InvalidId

from video2mp3.converter import cover_art, policy, spool
from video2mp3.converter.config import CPUS
from video2mp3.converter.limits import CpuBudget, CpuBudgetExceeded, MemoryLimitExceeded
from video2mp3.converter.policy import (
    AlreadyFinal,
    Cancelled,
    Ending,
    JobGone,
    LeftExpress,
    LostLease,
    NoSuchJob,
    Outcome,
    ShuttingDown,
    SpoolYielded,
    StorageUnavailable,
    UploadStalled,
)
from video2mp3.converter.transcode import ConversionError, LimitExceeded, TranscodeResult, transcode
from video2mp3.converter.video_source import VideoSource
from video2mp3.domain import jobs, mp3_files
from video2mp3.storage.gridfs_growing import GrowingDownload
from video2mp3.storage.gridfs_upload import ChunkedUpload
from video2mp3.storage.mongo import VIDEOS_BUCKET
from video2mp3.telemetry import metrics, tracing

if TYPE_CHECKING:
    from video2mp3.converter.worker import Worker

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5
MiB = 1024 * 1024
LEASE_WAIT_S = 1.0  # between looks at a job another worker holds


class Task:
    """One delivery of a task: its job converted once, and everything that
    conversion keeps. `waiting()`: tasks queued behind it now (kept fresh by
    the consumer)."""

    def __init__(self, worker: Worker, job_id: str, waiting: Callable[[], int] = lambda: 0) -> None:
        self.worker = worker
        self.cfg = worker.cfg
        self.jobs, self.mp3s = worker.jobs, worker.mp3s
        self.job_id = job_id
        self.waiting = waiting
        # Whether this conversion may use more than one core: decided now,
        # and asked again before each segment while it does (alone()).
        self.overlap = self.alone()
        # The attempt's: a new one after a retry in place (_attempt).
        self.job: jobs.Job                 # as take_lease found it, before this attempt
        self.mp3_fid = ObjectId()          # this attempt's MP3
        self.mp3: ChunkedUpload | None = None
        self.parts: list[tuple[ObjectId, ChunkedUpload]] = []  # chapters 2..N of a split (open_part)
        self.read_bytes = 0                # fetched from GridFS for the video
        self.started = 0.0
        self.span: Any = None
        self._progress_at = 0.0            # when progress was last written (which renews the lease)
        self._percent = 0                  # the highest percent reached
        self._upload_checked = 0.0         # when the upload's heartbeat was last looked at
        self.cpu = CpuBudget()             # this attempt's CPU seconds (converter/limits.py)

    # --- the steps, in order -----------------------------------------------------

    def run(self) -> Outcome:
        """Runs the task to its end and says what becomes of its delivery. Never raises."""
        while True:
            try:
                with _storage_errors():
                    return self._attempt()
            except Exception as e:  # noqa: BLE001 - every error has its ending (policy.ending_for)
                ending = policy.ending_for(e)
                if ending.outcome is not None:
                    return self._end(ending, e)
                self._log(ending, e)  # storage unavailable: retried in place, nothing spent
                if self.worker.stopping.wait(self.cfg.retry_delay_s):
                    return self._end(ShuttingDown.ending)

    def _attempt(self) -> Outcome:
        """One attempt at the job, its steps in order (each a new MP3 id)."""
        self.mp3_fid, self.mp3, self.read_bytes, self.parts = ObjectId(), None, 0, []
        self._progress_at, self._percent = 0.0, 0
        self.job = self.take_lease()
        self.cpu = CpuBudget()
        with tracing.tracer().start_as_current_span(
                "convert", attributes={"video2mp3.job_id": self.job_id, "video2mp3.attempt": self.job.attempts + 1,
                                       "video2mp3.video_bytes": self.job.video_size}) as self.span:
            self.started = time.monotonic()
            try:
                result = self.convert_audio()
            except MemoryError:  # RLIMIT_AS (CONVERTER_MEMORY_LIMIT_MB)
                return self.fail_job(MemoryLimitExceeded(self.cfg.memory_limit_mb))
            except ConversionError as e:
                return self.fail_job(e)
            except LeftExpress:
                self.jobs.leave_express(self.job_id, self.mp3_fid)  # its MP3 is gone already
                raise
            finally:
                metrics.CONVERSION_READ_BYTES.observe(self.read_bytes)
                self.span.set_attribute("video2mp3.read_bytes", self.read_bytes)
            self.store_mp3(result)
            return self.finish_job(result)

    def take_lease(self) -> jobs.Job:
        """Leases the job to this attempt, recording its MP3's id, and deletes
        the MP3s crashed attempts left. While another worker holds a live lease
        (a duplicate delivery), waits until it finishes or its lease runs out
        because it died. Raises NoSuchJob, AlreadyFinal or ShuttingDown."""
        while True:
            job = self.jobs.get(self.job_id)
            if job is None or job.deleted:
                raise NoSuchJob()
            if job.state.final:
                raise AlreadyFinal(job.state)
            before = self.jobs.start_attempt(self.job_id, self.mp3_fid, self.cfg.lease_s)
            if before is not None:
                break
            if self.worker.stopping.wait(LEASE_WAIT_S):
                raise ShuttingDown()
        self.mp3s.delete_leftovers(self.job_id, [f for f in before.pending_mp3_fids if f != self.mp3_fid])
        log.info("job %s: converting %s (attempt %d)", self.job_id, before.filename, before.attempts + 1,
                 extra={"step": "converting"})
        return before

    def read_video(self, *, growing: bool = False, skip: bool = True, local: BinaryIO | None = None) -> VideoSource:
        """The job's video in GridFS: bounded ranges of chunks
        (storage/gridfs_download.py), only where the audio may be, fetched ahead
        of the decoder (converter/video_source.py); `growing` while the upload
        still arrives (storage/gridfs_growing.py); or its `local` copy (spool_video)."""
        kw: dict[str, Any] = {}
        if local is not None:
            kw = {"local": local}
        elif growing:
            kw = {"growing": True, "on_wait": self.on_upload_wait}
            self._upload_checked = time.monotonic()
        return VideoSource(self.worker.mongo.db, _oid(self.job.video_fid), skip=skip,
                           on_fetch=metrics.GRIDFS_READ_BYTES.inc, **kw)

    def convert_audio(self) -> TranscodeResult:
        """The video's audio into this attempt's MP3, written as it is made,
        complete once this returns. A video still being uploaded is read as it
        grows; should that fail, the file may not be streamable after all, so
        it is converted again once its upload has ended: the only conversion
        that may fail the job (ConversionError). On any error the MP3 written
        so far is deleted; a job deleted meanwhile raises JobGone."""
        mp3 = self.mp3 = self.mp3s.open(self.mp3_fid, self.job)
        growing = self.job.uploading
        with self._discarded_on_error(), contextlib.ExitStack() as copies:
            local = None
            if growing and self.job.spool:
                local = self.spool_video()  # or SpoolYielded
                if local is not None:
                    copies.callback(local.close)
                growing = False  # complete now, copied or not
            picture = self.pick_cover(growing=growing, local=local)
            while True:
                video = self.read_video(growing=growing, local=local)
                try:
                    with video:
                        result = transcode(cast(BinaryIO, video.stream), mp3, self.job.options,
                                           filename=self.job.filename, on_progress=self.on_progress,
                                           overlap=self.overlap, encoders=self._encoders(), split_while=self.alone,
                                           picture=picture, open_part=self.open_part,
                                           limits=self.cfg.limits, on_duration=self.on_duration)
                    break
                except LimitExceeded:
                    if growing:  # its video is complete before the job fails, so that it can go too
                        assert isinstance(video.stream, GrowingDownload)
                        video.stream.wait_until_complete()
                    raise
                except ConversionError as e:
                    if not growing or isinstance(e, CpuBudgetExceeded):
                        raise
                    metrics.STREAM_FALLBACKS.inc()
                    log.info("job %s: converting while uploading failed (%s); converting the complete "
                             "file once it is uploaded", self.job_id, e, extra={"step": "stream_fallback"})
                finally:
                    self.read_bytes += video.bytes_fetched
                mp3.abort()  # its chunks go; the same MP3 id starts again from nothing
                self._discard_parts()
                assert isinstance(video.stream, GrowingDownload)
                video.stream.wait_until_complete()
                mp3 = self.mp3 = self.mp3s.open(self.mp3_fid, self.job)
                growing = False
            mp3.close()
            for _, part in self.parts:
                part.close()
        return result

    def spool_video(self) -> BinaryIO | None:
        """converter/spool.py: the upload copied to local disk as it arrives;
        the copy, complete. None if there is no copy (copies are off, or there
        was no room) and the upload has ended: convert from GridFS. Raises
        SpoolYielded once the job is handed back (for the tasks waiting, or for
        want of room while the upload goes on)."""
        cfg = self.cfg
        room = spool.Room(cfg.spool_dir, cfg.spool_max_mb * MiB, cfg.spool_reserve_mb * MiB)
        copy: BinaryIO | None = None
        try:
            if not cfg.spool_max_mb:
                raise spool.NoRoom("copies are off (CONVERTER_SPOOL_MAX_MB=0)")
            copy = spool.open_spool(cfg.spool_dir)
            self._upload_checked = time.monotonic()
            with GrowingDownload(self.worker.mongo.db, VIDEOS_BUCKET, _oid(self.job.video_fid),
                                 on_wait=self.on_spool_wait, on_fetch=metrics.GRIDFS_READ_BYTES.inc) as src:
                try:
                    size = spool.copy_upload(src, copy, room=room, on_block=lambda: self.on_progress(0.0))
                finally:
                    self.read_bytes += src.bytes_fetched
        except (spool.NoRoom, OSError) as e:  # OSError: the spool's disk (full, not writable)
            if copy is not None:
                copy.close()
            metrics.SPOOLS.labels("no_room").inc()
            log.warning("job %s: not copying its upload (%s)", self.job_id, e, extra={"step": "spool"})
            self.hand_back_upload()
            return None  # it has ended: converted from GridFS now
        except BaseException as e:
            if copy is not None:
                copy.close()
            if isinstance(e, SpoolYielded):
                metrics.SPOOLS.labels("yielded").inc()
            raise
        metrics.SPOOLS.labels("complete").inc()
        log.info("job %s: its upload (%d bytes) was copied as it arrived; converting the copy", self.job_id, size,
                 extra={"step": "spooled", "bytes": size})
        return copy

    def on_spool_wait(self) -> None:
        """GrowingDownload's on_wait while copying: as on_upload_wait, and the
        job is handed back if a task waits behind it (converter/spool.py)."""
        self.on_upload_wait()
        if self.waiting() > 0:
            self.hand_back_upload()

    def hand_back_upload(self) -> None:
        """Raises SpoolYielded once the job is handed back for its upload's end
        to publish again (JobStore.yield_upload); returns if the upload has ended."""
        if self.jobs.yield_upload(self.job_id, self.mp3_fid):
            raise SpoolYielded()

    def open_part(self, track: int) -> ChunkedUpload:
        """transcode()'s open_part: the MP3 of chapter `track` (2..N) of a
        split, recorded on the job before anything is written, like the first."""
        fid = ObjectId()
        if not self.jobs.add_part(self.job_id, self.mp3_fid, fid):
            raise JobGone() if self._gone() else LostLease()
        upload = self.mp3s.open(fid, self.job, track=track)
        self.parts.append((fid, upload))
        return upload

    def pick_cover(self, *, growing: bool, local: BinaryIO | None = None) -> tuple[str, bytes] | None:
        """With `cover_art`: the picture for the MP3's tag (converter/cover_art.py),
        read from the video on its own, every byte (the conversion's read skips
        video samples): a few keyframes' worth, or the first seconds of an
        upload still arriving. None without the option, or if there is none."""
        if not self.job.options.cover_art:
            return None
        video = self.read_video(growing=growing, skip=False, local=local)
        try:
            with video:
                found = cover_art.pick(video.stream, seekable=not growing)
        finally:
            self.read_bytes += video.bytes_fetched
        return None if found is None else (found.mime, found.data)

    def store_mp3(self, result: TranscodeResult) -> None:
        """The stored MP3 gets its real info frame (transcode() could not seek back to it)."""
        if result.header_patch:
            self.mp3s.patch(self.mp3_fid, *result.header_patch)
        for (fid, _), part in zip(self.parts, result.parts[1:], strict=True):
            if part.header_patch:
                self.mp3s.patch(fid, *part.header_patch)

    def files(self, result: TranscodeResult) -> tuple[mp3_files.Mp3File, ...]:
        """What the job records of its MP3s: this attempt's one, or one per chapter."""
        name = self.job.filename
        if not result.parts:
            return (mp3_files.Mp3File(self.mp3_fid, mp3_files.single_name(name), result.bytes_written,
                                      duration_ms=round(result.duration_seconds * 1000)),)
        fids = [self.mp3_fid, *(fid for fid, _ in self.parts)]
        count = len(result.parts)
        return tuple(mp3_files.Mp3File(fid, mp3_files.part_name(name, p.track, count, p.title), p.bytes_written,
                                       track=p.track, title=p.title, duration_ms=round(p.duration_seconds * 1000))
                     for fid, p in zip(fids, result.parts, strict=True))

    def finish_job(self, result: TranscodeResult) -> Outcome:
        """DONE with this attempt's MP3, if the lease is still ours; else another
        attempt finished it, and this MP3 goes."""
        # Counted before DONE, once per job (an upsert): a crash in between
        # cannot hand minutes back (domain/usage.py).
        self.worker.minutes.record(self.job_id, self.job.user_id, result.duration_seconds)
        if not self.jobs.finish_done(self.job_id, self.mp3_fid, result.bytes_written, self.files(result),
                                     result.duration_seconds):
            outcome = self._end(policy.SUPERSEDED)
            self.mp3s.discard(self.job_id, self.mp3_fid)
            self._discard_parts()
            return outcome
        seconds = time.monotonic() - self.started
        metrics.CONVERSION_SECONDS.observe(seconds)
        metrics.AUDIO_SECONDS.inc(result.duration_seconds)
        metrics.ENCODER_JOINS.labels("joined").inc(result.encoder_joins)
        metrics.ENCODER_JOINS.labels("fallback").inc(result.join_fallbacks)
        if seconds > 0:
            metrics.REALTIME_FACTOR.observe(result.duration_seconds / seconds)
        self.span.set_attribute("video2mp3.audio_seconds", result.duration_seconds)
        outcome = self._end(policy.DONE, bytes=result.bytes_written, audio=result.duration_seconds,
                            seconds=seconds, extra={"seconds": round(seconds, 3), "read_bytes": self.read_bytes,
                                                    "video_bytes": self.job.video_size,
                                                    "encoder_joins": result.encoder_joins})
        self.worker.ended(self.job_id)
        return outcome

    def fail_job(self, error: ConversionError) -> Outcome:
        """The video cannot be converted: the job ends FAILED, saying why (its MP3 is gone already).
        One over a limit per job keeps nothing: its video goes now, whatever VIDEO_RETENTION says."""
        over_limit = isinstance(error, LimitExceeded)
        if isinstance(error, LimitExceeded):
            metrics.LIMIT_REFUSALS.labels(error.kind, "conversion").inc()
        if self.jobs.finish_failed(self.job_id, str(error)):
            self.worker.ended(self.job_id, keep=not over_limit)
        tracing.fail(self.span, str(error))
        return self._end(policy.FAILED, error)

    # --- while converting -----------------------------------------------------------

    def alone(self) -> bool:
        """Whether the conversion may use every core (converter/policy.overlap):
        asked at the start and, for a job that got them, again every ~25 s of
        audio (converter/split_encode.py) with what is in sight then, so a
        backlog that builds up behind it gets the second core back within a segment."""
        return policy.overlap(self.cfg.overlap_mode, CPUS, self.cfg.workers, self.worker.others_converting(),
                              self.waiting())

    def _encoders(self) -> int:
        return policy.encoders(self.cfg.overlap_mode, CPUS, self.cfg.workers) if self.overlap else 1

    def on_progress(self, fraction: float) -> None:
        """Writes 0..99 (DONE writes 100), never less than before, every
        PROGRESS_EVERY_S; that write renews the lease and notices a delete."""
        if self.worker.cancel.is_set():
            raise Cancelled()
        self.check_cpu()
        # Kept even when not written now: while a streamed upload is
        # awaited, only on_progress(0.0) calls come (on_upload_wait).
        self._percent = max(self._percent, min(99, int(fraction * 100)))
        now = time.monotonic()
        if now - self._progress_at < PROGRESS_EVERY_S:
            return
        self._progress_at = now
        try:
            still_ours = self.jobs.renew(self.job_id, self.mp3_fid, self._percent, self.cfg.lease_s)
        except pymongo.errors.PyMongoError:
            return  # progress is advisory; the final write is what counts
        if not still_ours:
            raise JobGone() if self._gone() else LostLease()

    def on_duration(self, seconds: float | None) -> None:
        """The track's declared length, before decoding: on the express lane, a
        long one leaves at once (an undeclared or lying one by its CPU, check_cpu)."""
        if self.worker.express and seconds is not None and seconds > self.cfg.express_max_audio_s:
            raise LeftExpress()

    def check_cpu(self) -> None:
        """The attempt's CPU budget (converter/limits.py): over it, the job fails;
        on the express lane, over EXPRESS_CPU_S, it leaves the lane."""
        used = self.cpu.used()
        if used > self.cfg.cpu_budget_s:
            raise CpuBudgetExceeded(self.cfg.cpu_budget_s)
        if self.worker.express and used > self.cfg.express_cpu_s:
            raise LeftExpress()

    def on_upload_wait(self) -> None:
        """GrowingDownload's on_wait: while nothing decodes, keep the lease
        (on_progress renews it every PROGRESS_EVERY_S and notices a delete
        or a shutdown) and give the job up if its upload's gateway died."""
        self.on_progress(0.0)  # progress only grows: 0 renews without moving it
        now = time.monotonic()
        if now - self._upload_checked < jobs.UPLOAD_TOUCH_S:
            return
        self._upload_checked = now
        cutoff = jobs.now() - dt.timedelta(seconds=jobs.UPLOAD_STALE_S)
        if self.jobs.abandon_upload(self.job_id, self.mp3_fid, cutoff):
            log.warning("job %s: its upload stopped without ending (no heartbeat for %.0f s); "
                        "given up", self.job_id, jobs.UPLOAD_STALE_S)
            raise UploadStalled()

    @contextlib.contextmanager
    def _discarded_on_error(self) -> Iterator[None]:
        """This attempt's MP3 is deleted if the block fails; a job deleted
        meanwhile (its video's chunks vanish mid-read) raises JobGone."""
        try:
            yield
        except (LostLease, JobGone):
            self.mp3s.discard(self.job_id, self.mp3_fid, self.mp3)
            self._discard_parts()
            raise
        except Exception as e:
            if self._gone():
                self.mp3s.discard(self.job_id, self.mp3_fid, self.mp3)
                self._discard_parts()
                raise JobGone() from e
            if isinstance(e, ConversionError):
                self.mp3s.discard(self.job_id, self.mp3_fid, self.mp3)
                self._discard_parts()
            else:
                self._discard_parts(quietly=True)
                self.mp3s.discard_quietly(self.job_id, self.mp3_fid, self.mp3)
            raise

    def _discard_parts(self, *, quietly: bool = False) -> None:
        """The chapters' MP3s this attempt wrote (a failed or superseded split);
        quietly: best effort while MongoDB may be down (the next attempt
        deletes what is left: they are in pending_mp3_fids)."""
        parts, self.parts = self.parts, []
        for fid, upload in parts:
            try:
                self.mp3s.discard(self.job_id, fid, upload)
            except pymongo.errors.PyMongoError:
                if not quietly:
                    raise

    def _gone(self) -> bool:
        try:
            job = self.jobs.get(self.job_id)
        except pymongo.errors.PyMongoError:
            return False
        return job is None or job.deleted

    # --- the end --------------------------------------------------------------------

    def _end(self, ending: Ending, error: BaseException | None = None, **fields: Any) -> Outcome:
        """Counts and logs how the task ended; what becomes of its delivery."""
        assert ending.outcome is not None, "a retry is no ending"
        if ending.counted_as:
            metrics.CONVERSIONS.labels(ending.counted_as).inc()
        self._log(ending, error, **fields)
        return ending.outcome

    def _log(self, ending: Ending, error: BaseException | None = None, *, extra: dict | None = None,
             **fields: Any) -> None:
        if ending.message is None:
            return
        line = ending.message.format(job=self.job_id, error=error, **fields)
        step = {"step": ending.step} if ending.step else {}
        log.log(ending.level, line, exc_info=error if ending.traceback else None, extra=step | (extra or {}))


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    """MongoDB errors become the policy's StorageUnavailable."""
    try:
        yield
    except pymongo.errors.PyMongoError as e:
        raise StorageUnavailable(str(e)) from e


def _oid(value) -> ObjectId:
    try:
        if value is None:  # ObjectId(None) would make up a new id
            raise InvalidId("no video")
        return value if isinstance(value, ObjectId) else ObjectId(value)
    except (InvalidId, TypeError):
        raise ConversionError("the job's video reference is not valid") from None
