"""`video2mp3 convert`: upload several files at once, follow each conversion,
download each MP3. One thread per file; rich.progress draws the bars on a
terminal, plain lines are printed otherwise."""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import http.client
import mimetypes
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from video2mp3.cli import resumable
from video2mp3.cli.session import (
    EXIT_AUTH,
    EXIT_CONVERSIONS_FAILED,
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    UPLOAD_CHUNK,
    CliError,
    Session,
    describe,
    error_reason,
    not_logged_in,
    retry_delay,
)
from video2mp3.media.v1 import media_pb2

POLL_S = 1.0
FINAL = (media_pb2.JOB_STATE_DONE, media_pb2.JOB_STATE_FAILED)
BUSY_RETRIES = 5  # TOO_MANY_UPLOADS: the server says when to try again


def state_name(state: int) -> str:
    return media_pb2.JobState.Name(state).removeprefix("JOB_STATE_")


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


class Interrupted(Exception):
    """Ctrl-C: the call in progress was cancelled."""


@dataclasses.dataclass
class Item:
    path: Path
    dest: Path
    task: TaskID | None = None
    phase: str = "waiting"  # uploading, converting, downloading, done, failed
    job_id: str = ""
    error: CliError | None = None
    summary: str = ""

    @property
    def name(self) -> str:
        return self.path.name


def mp3_destination(video: Path, out_dir: Path | None) -> Path:
    """holiday.mp4 -> holiday.mp3 next to it or in out_dir; never the source itself."""
    dest = (out_dir or video.parent) / f"{video.stem}.mp3"
    if dest.resolve() == video.resolve():
        dest = dest.with_name(f"{video.stem}.converted.mp3")
    return dest


# ------------------------------------------------------------------ display

class _Detail(ProgressColumn):
    """Bytes, speed and ETA while transferring (rich's own columns); the
    conversion's percentage or the item's status otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.size, self.speed, self.eta = DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()

    def render(self, task: Task) -> Text:
        phase = task.fields.get("phase", "")
        if phase in ("uploading", "downloading"):
            return Text.assemble(self.size.render(task), " ", self.speed.render(task),
                                 " eta ", self.eta.render(task))
        if phase == "converting":
            return Text(f"{task.completed:.0f}% {task.fields.get('status', '')}")
        return Text(task.fields.get("status", ""))


class Display:
    """Bars on a terminal; otherwise one plain line per event."""

    def __init__(self, console: Console):
        self.console = console
        self.bars = console.is_terminal
        self.progress = Progress(
            TextColumn("{task.fields[phase]:<11}"), TextColumn("{task.description}", markup=False),
            BarColumn(), _Detail(), console=console, disable=not self.bars,
        )
        self._lock = threading.Lock()

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def add(self, item: Item) -> None:
        item.task = self.progress.add_task(item.name, total=None, phase="waiting", status="")

    def phase(self, item: Item, phase: str, total: float | None, note: str = "") -> None:
        item.phase = phase
        assert item.task is not None
        # reset(): a new phase starts its own speed and ETA estimates.
        self.progress.reset(item.task, total=total, completed=0, phase=phase, status="")
        if not self.bars and note:
            self.line(f"{item.name}: {note}")

    def advance(self, item: Item, n: float) -> None:
        assert item.task is not None
        self.progress.advance(item.task, n)

    def update(self, item: Item, completed: float, status: str) -> None:
        assert item.task is not None
        self.progress.update(item.task, completed=completed, status=status)

    def end(self, item: Item, status: str) -> None:
        assert item.task is not None
        self.progress.update(item.task, phase=item.phase, status=status)
        if item.phase == "done":
            self.progress.update(item.task, total=1, completed=1)

    def line(self, text: str) -> None:
        with self._lock:
            if self.bars:  # above the bars; markup=False: file names may contain [brackets]
                self.console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                click.echo(text)


# ------------------------------------------------------------------ one file

class Converter:
    def __init__(self, session: Session, options: dict, display: Display, parallel: int = 4,
                 resumable_over: int | None = None):
        self.s = session
        self.options = options
        self.display = display
        self.parallel = parallel
        # Files of at least this many bytes go by tus (cli/resumable.py); None: never.
        self.resumable_over = resumable_over
        self.cancelled = threading.Event()
        self._calls: set = set()
        self._lock = threading.Lock()

    # Calls in flight, so Ctrl-C can cancel them from the main thread.
    def _track(self, call):
        with self._lock:
            self._calls.add(call)
        if self.cancelled.is_set():
            call.cancel()
        return call

    def _untrack(self, call) -> None:
        with self._lock:
            self._calls.discard(call)

    def cancel_all(self) -> None:
        self.cancelled.set()
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            call.cancel()

    def _check(self) -> None:
        if self.cancelled.is_set():
            raise Interrupted()

    def run(self, items: list[Item]) -> int:
        """Converts every item; the exit code."""
        for item in items:
            self.display.add(item)
        with self.display, cf.ThreadPoolExecutor(max(1, min(self.parallel, len(items)))) as pool:
            futures = [pool.submit(self._one, item) for item in items]
            try:
                pending = set(futures)
                while pending:  # short waits: Ctrl-C lands between them
                    _, pending = cf.wait(pending, timeout=0.2)
            except KeyboardInterrupt:
                self.cancel_all()
                cf.wait(futures)
        if self.cancelled.is_set():
            for item in items:
                self.display.line(self._after_interrupt(item))
            return EXIT_INTERRUPTED
        failed = [i for i in items if i.phase != "done"]
        if not failed:
            return 0
        codes = {i.error.code for i in failed if i.error}
        for code in (EXIT_AUTH, EXIT_UNREACHABLE):  # nothing could have worked
            if codes == {code}:
                return code
        return EXIT_CONVERSIONS_FAILED

    def _after_interrupt(self, item: Item) -> str:
        if item.phase == "done":
            return item.summary
        if item.phase == "failed":
            return item.summary
        if item.job_id:
            return (f"{item.name}: job {item.job_id} keeps converting on the server; fetch the MP3 later "
                    f"with `video2mp3 download {item.job_id} -o {item.dest.parent}`")
        if item.phase == "uploading":
            return f"{item.name}: upload cancelled; nothing was kept on the server"
        return f"{item.name}: not uploaded"

    def _one(self, item: Item) -> None:
        try:
            self._check()
            job = self._upload(item)
            item.job_id = job.job_id
            job = self._follow(item, job)
            if job.state == media_pb2.JOB_STATE_FAILED:
                raise CliError(f"conversion failed: {job.error or 'no reason given'}")
            saved = self._download(item, job)
            item.phase = "done"
            where = str(item.dest) if len(saved) == 1 else f"{len(saved)} MP3s in {item.dest.parent} (one per chapter)"
            item.summary = (f"{item.name} -> {where} ({human_bytes(job.mp3_size_bytes)}, "
                            f"job {job.job_id})")
            self.display.end(item, "done")
            self.display.line(item.summary)
        except Interrupted:
            pass
        except grpc.RpcError as e:
            if not self.cancelled.is_set():
                self._fail(item, describe(e, self.s.server))
        except CliError as e:
            self._fail(item, e)
        except OSError as e:
            self._fail(item, CliError(f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")))

    def _fail(self, item: Item, error: CliError) -> None:
        was, item.phase, item.error = item.phase, "failed", error
        job = f" (job {item.job_id})" if item.job_id else ""
        item.summary = f"{item.name}: FAILED while {was}{job}: {error}"
        self.display.end(item, "failed")
        self.display.line(item.summary)

    # -- upload --------------------------------------------------------------

    def _upload(self, item: Item) -> media_pb2.Job:
        size = item.path.stat().st_size
        if self.resumable_over is not None and size >= self.resumable_over:
            return self._upload_resumable(item, size)
        for attempt in range(BUSY_RETRIES + 1):
            self.display.phase(item, "uploading", size, f"uploading {human_bytes(size)}")
            call = self._track(self.s.media.UploadVideo.future(self._messages(item), metadata=self.s.metadata))
            try:
                job = call.result()
                if not self.display.bars:
                    self.display.line(f"{item.name}: uploaded as job {job.job_id}")
                return job
            except grpc.FutureCancelledError:
                raise Interrupted() from None
            except grpc.RpcError as e:
                busy = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error_reason(e) == "TOO_MANY_UPLOADS"
                if not busy or attempt == BUSY_RETRIES or self.cancelled.is_set():
                    raise
                self.cancelled.wait(retry_delay(e) or 3.0)
                self._check()
            finally:
                self._untrack(call)
        raise AssertionError("unreachable")

    def _upload_resumable(self, item: Item, size: int) -> media_pb2.Job:
        """tus over HTTP: survives dropped connections and gateway restarts, and a
        second run of the same command goes on where the first stopped."""
        self.display.phase(item, "uploading", size, f"uploading {human_bytes(size)} (resumable)")
        up = resumable.TusUpload(
            self.s.server, lambda: dict(self.s.metadata)["authorization"], item.path, self.options,
            on_bytes=lambda n: self.display.advance(item, n),
            on_offset=lambda offset: self.display.update(item, offset, ""),
            cancelled=self.cancelled)
        try:
            job_id = up.run()
        except resumable.Cancelled:
            up.terminate()
            raise Interrupted() from None
        except resumable.UploadError as e:
            if e.status == 401:
                raise not_logged_in(f"the server did not accept your login ({e})") from None
            raise CliError(str(e)) from None
        except (OSError, http.client.HTTPException) as e:
            raise CliError(f"the upload could not go on ({e}); run the same command again to resume it",
                           EXIT_UNREACHABLE) from None
        if not self.display.bars:
            self.display.line(f"{item.name}: uploaded as job {job_id}")
        return self.s.media.GetJob(media_pb2.GetJobRequest(job_id=job_id), metadata=self.s.metadata, timeout=30)

    def _messages(self, item: Item) -> Iterator[media_pb2.UploadVideoRequest]:
        """Options in the first message, 1 MiB of the file in each. (On Ctrl-C
        the call is cancelled; ending this iterator would mean "upload done".)"""
        msg = media_pb2.UploadVideoRequest(filename=item.name, **self.options)
        msg.body.content_type = mimetypes.guess_type(item.name)[0] or "application/octet-stream"
        with open(item.path, "rb") as f:
            while True:
                msg.body.data = f.read(UPLOAD_CHUNK)
                yield msg
                self.display.advance(item, len(msg.body.data))
                if len(msg.body.data) < UPLOAD_CHUNK:
                    return
                msg = media_pb2.UploadVideoRequest()

    # -- conversion ------------------------------------------------------------

    def _follow(self, item: Item, job: media_pb2.Job) -> media_pb2.Job:
        self.display.phase(item, "converting", 100, f"converting (job {job.job_id})")
        self._show(item, job)
        if job.state in FINAL:
            return job
        watched = self._watch(item, job.job_id)
        if watched is not None:
            return watched
        while True:  # polling: servers without WatchJob, or with no watcher slot free
            if self.cancelled.wait(POLL_S):
                raise Interrupted()
            job = self.s.media.GetJob(media_pb2.GetJobRequest(job_id=job.job_id),
                                      metadata=self.s.metadata, timeout=30)
            self._show(item, job)
            if job.state in FINAL:
                return job

    def _watch(self, item: Item, job_id: str) -> media_pb2.Job | None:
        """The final job through WatchJob's stream; None if the server has no
        WatchJob (an older one), no watcher slot free (RESOURCE_EXHAUSTED), or
        the stream ended before the job was final: then poll."""
        if not hasattr(self.s.media, "WatchJob"):  # a stand-in without it (tests)
            return None
        stream = self._track(self.s.media.WatchJob(media_pb2.WatchJobRequest(job_id=job_id),
                                                   metadata=self.s.metadata))
        try:
            for job in stream:
                self._show(item, job)
                if job.state in FINAL:
                    return job
        except grpc.RpcError as e:
            if self.cancelled.is_set():
                raise Interrupted() from None
            if e.code() not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise
        finally:
            self._untrack(stream)
        return None

    def _show(self, item: Item, job: media_pb2.Job) -> None:
        self.display.update(item, job.progress, state_name(job.state).lower())

    # -- download --------------------------------------------------------------

    def _download(self, item: Item, job: media_pb2.Job) -> list[Path]:
        """The job's MP3: one, or one per chapter (split_chapters) next to
        where the one would go, under the names the job gives them."""
        self.display.phase(item, "downloading", job.mp3_size_bytes or None)
        saved = []
        parts = list(job.files) if len(job.files) > 1 else [None]
        for f in parts:
            self._check()
            dest = item.dest if f is None else item.dest.with_name(f.name)
            saved.append(download(self.s, job.job_id, dest, lambda n: self.display.advance(item, n),
                                  self._track, self._untrack, mp3=f.track if f else 0))
        self._check()
        return saved


def download(session: Session, job_id: str, dest: Path | Callable[[str], Path],
             on_bytes: Callable[[int], None] = lambda n: None,
             track: Callable = lambda call: call, untrack: Callable = lambda call: None, *, mp3: int = 0) -> Path:
    """Streams the job's MP3 (`mp3`: one of a job split by chapter; 0: the
    job's one MP3, or a split job's as one ZIP) into `dest` (or dest(server's
    file name)) through a .part file, so an interrupted download never looks complete."""
    call = track(session.media.DownloadMp3(media_pb2.DownloadMp3Request(job_id=job_id, track=mp3),
                                           metadata=session.metadata))
    return save(call, dest, on_bytes, untrack)


def download_zip(session: Session, job_ids: list[str], dest: Path | Callable[[str], Path],
                 on_bytes: Callable[[int], None] = lambda n: None) -> Path:
    """Several DONE jobs' MP3s as one ZIP (ZipJobs), saved like download()."""
    call = session.media.ZipJobs(media_pb2.ZipJobsRequest(job_ids=job_ids), metadata=session.metadata)
    return save(call, dest, on_bytes)


def save(call, dest: Path | Callable[[str], Path], on_bytes: Callable[[int], None],
         untrack: Callable = lambda call: None) -> Path:
    """A streamed HttpBody answer into a file, through a .part file."""
    part: Path | None = None
    try:
        if callable(dest):
            headers = dict(call.initial_metadata() or ())
            dest = dest(filename_from_disposition(headers.get("content-disposition", "")))
        part = dest.with_name(dest.name + ".part")
        with open(part, "wb") as f:
            for body in call:
                f.write(body.data)
                on_bytes(len(body.data))
        os.replace(part, dest)
        part = None
        return dest
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.CANCELLED:
            raise Interrupted() from None
        raise
    finally:
        untrack(call)
        if part is not None:
            part.unlink(missing_ok=True)


def filename_from_disposition(value: str) -> str:
    """The file name a Content-Disposition offers (filename* first), as a bare name."""
    from urllib.parse import unquote

    name = ""
    for param in value.split(";"):
        key, _, val = param.strip().partition("=")
        if key.lower() == "filename*" and val.lower().startswith("utf-8''"):
            name = unquote(val[7:])
            break
        if key.lower() == "filename" and not name:
            name = val.strip('"')
    return Path(name.replace("\\", "/")).name if name else ""
