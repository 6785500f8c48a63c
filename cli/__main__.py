"""The `video2mp3` command: a gRPC client of the mesh, through Envoy."""
from __future__ import annotations

import datetime as dt
import functools
import sys
import time
from pathlib import Path

import click
import grpc
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from video2mp3.auth.v1 import auth_pb2
from video2mp3.cli import convert as conv
from video2mp3.cli.session import (
    DEFAULT_SERVER,
    EXIT_AUTH,
    EXIT_CONVERSIONS_FAILED,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    CliError,
    Server,
    Session,
    describe,
    forget_token,
    save_token,
    saved_refresh_token,
    token_claims,
)
from video2mp3.cli.timestamps import Position
from video2mp3.media.v1 import media_pb2

EXIT_CODES = f"""\b
Exit codes:
  0    success
  {EXIT_ERROR}    the server refused the request (the message says why)
  2    bad usage (unknown option, missing argument...)
  {EXIT_AUTH}    not logged in, login expired or rejected: run `video2mp3 login`
  {EXIT_UNREACHABLE}    server unreachable: check --server / VIDEO2MP3_SERVER
  {EXIT_CONVERSIONS_FAILED}    convert: some conversions failed (each file's line says why)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""

HELP = f"""Convert videos to MP3 with a video2mp3 server.

\b
  video2mp3 signup --email you@example.com
  video2mp3 login --email you@example.com
  video2mp3 convert holiday.mp4 party.mov -o music/
  video2mp3 jobs

The server is {DEFAULT_SERVER} (Envoy's port) unless --server or
VIDEO2MP3_SERVER says otherwise: HOST:PORT, or https://HOST[:PORT] for TLS
with the system's certificate authorities (--ca FILE for your own).
The login is kept in $XDG_CONFIG_HOME/video2mp3/ (default
~/.config/video2mp3/: `token` and `refresh_token`, readable by you only)
and renews itself while you use it, until `video2mp3 logout`. Programs can
use an API key instead (`video2mp3 keys create`), given as --api-key or
VIDEO2MP3_API_KEY.
"""


class Context:
    def __init__(self, server: Server, api_key: str | None = None):
        self.server = server
        self.api_key = api_key
        self.console = Console(highlight=False)
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = Session(self.server, self.api_key)
        return self._session

    @property
    def plain(self) -> bool:
        return not self.console.is_terminal

    def echo(self, text: str = "") -> None:
        click.echo(text)  # as is: rich would expand tabs


def command(group: click.Group, *args, **kwargs):
    """A subcommand whose CliError, gRPC error and Ctrl-C end it with a message
    and its exit code, never a traceback."""
    def decorate(fn):
        @group.command(*args, **kwargs)
        @click.pass_obj
        @functools.wraps(fn)
        def wrapper(ctx: Context, *a, **kw):
            try:
                return fn(ctx, *a, **kw)
            except grpc.RpcError as e:
                fail(ctx, describe(e, ctx.server))
            except CliError as e:
                fail(ctx, e)
            except KeyboardInterrupt:
                fail(ctx, CliError("interrupted", EXIT_INTERRUPTED))
        return wrapper
    return decorate


def fail(ctx: Context, err: CliError):
    click.echo(f"video2mp3: {err}", err=True)
    sys.exit(err.code)


@click.group(help=HELP, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", envvar="VIDEO2MP3_SERVER", default=DEFAULT_SERVER, show_default=True,
              help="HOST:PORT, http://HOST[:PORT] or https://HOST[:PORT] (env VIDEO2MP3_SERVER).")
@click.option("--tls", is_flag=True, help="Use TLS with the system's certificate authorities.")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Use TLS trusting this CA certificate (PEM).")
@click.option(
    "--api-key",
    envvar="VIDEO2MP3_API_KEY",
    metavar="KEY",
    help="Use this API key instead of the saved login (env VIDEO2MP3_API_KEY, which keeps it out of the process list).",
)
@click.version_option(package_name="video2mp3")
@click.pass_context
def main(click_ctx: click.Context, server: str, tls: bool, ca: Path | None, api_key: str | None) -> None:
    try:
        click_ctx.obj = Context(Server.parse(server, tls, ca), api_key)
    except CliError as e:
        raise click.BadParameter(str(e), param_hint="--server") from None


# ------------------------------------------------------------------ account

def _ask_email(email: str | None) -> str:
    return email or click.prompt("Email")


def _password(from_stdin: bool, prompt: str, confirm: bool = False) -> str:
    if from_stdin:  # scripts: `... | video2mp3 login --password-stdin`
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt(prompt, hide_input=True, confirmation_prompt=confirm)


password_stdin = click.option("--password-stdin", is_flag=True,
                              help="Read the password from the first line of standard input (scripts).")


@command(main, help="Create an account (the password is asked twice, not echoed).")
@click.option("--email", help="Your email address (asked if not given).")
@password_stdin
def signup(ctx: Context, email: str | None, password_stdin: bool) -> None:
    email = _ask_email(email)
    password = _password(password_stdin, "Password (8 characters or more)", confirm=True)
    user = ctx.session.auth.SignUp(auth_pb2.SignUpRequest(email=email, password=password), timeout=30)
    ctx.echo(f"Signed up as {user.email}. Now run: video2mp3 login --email {user.email}")


@command(
    main,
    help="Log in and keep the login for the other commands (password not echoed). "
    "It renews itself while you use it, until `video2mp3 logout`.",
)
@click.option("--email", help="Your email address (asked if not given).")
@password_stdin
def login(ctx: Context, email: str | None, password_stdin: bool) -> None:
    email = _ask_email(email)
    password = _password(password_stdin, "Password")
    answer = ctx.session.auth.Login(auth_pb2.LoginRequest(email=email, password=password), timeout=30)
    path = save_token(answer.access_token, answer.refresh_token)
    lasts = (
        f"; it renews itself while you use it (unused for {answer.refresh_token_expires_in // 86400} days, it ends)"
        if answer.refresh_token
        else f" for {answer.expires_in // 60} minutes"
    )
    ctx.echo(f"Logged in as {email.strip().lower()} (saved in {path.parent}){lasts}.")


@command(main, help="End the saved login: the server revokes its session, and the token is forgotten.")
def logout(ctx: Context) -> None:
    refresh_token = saved_refresh_token()
    ended = ""
    if refresh_token:
        try:
            ctx.session.auth.RevokeSession(auth_pb2.RevokeSessionRequest(refresh_token=refresh_token), timeout=30)
            ended = " The server has ended the session."
        except grpc.RpcError as e:
            ended = (
                f" The server could not be told ({describe(e, ctx.server)}); the session ends by itself "
                "once left unused."
            )
    ctx.echo(f"Logged out.{ended}" if forget_token() else "Was not logged in.")


@command(main, help="Show who the saved login (or the API key) belongs to.")
def whoami(ctx: Context) -> None:
    session = ctx.session
    user = session.auth.GetMe(auth_pb2.GetMeRequest(), metadata=session.metadata, timeout=30)
    if session.api_key:
        ctx.echo(f"{user.email} (user {user.id}); using API key {session.api_key[:8]}…")
        return
    exp = token_claims(session.credential()).get("exp")
    left = f"; access token valid for {max(0, int(exp - time.time())) // 60} more minutes" if exp else ""
    renews = ", renewed automatically" if saved_refresh_token() else ""
    ctx.echo(f"{user.email} (user {user.id}){left}{renews}")


@command(main, help="Show the server's health; exit 1 when a dependency is down.")
def health(ctx: Context) -> None:
    h = ctx.session.media.GetHealth(media_pb2.GetHealthRequest(), timeout=30)
    for field in ("status", "mongodb", "rabbitmq", "mysql"):
        ctx.echo(f"{field + ':':<10}{getattr(h, field)}")
    if h.status != "healthy":
        sys.exit(EXIT_ERROR)


# ------------------------------------------------------------------ conversions

@command(main, help="Upload videos, convert each to MP3 and download the MP3s. "
                    "Ctrl-C during an upload cancels it (nothing stays on the server); "
                    "during a conversion the job keeps running: fetch it later with `video2mp3 download JOB`.")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the MP3s go (default: next to each video). Created if missing.")
@click.option("--bitrate", type=click.IntRange(32, 320), metavar="KBPS",
              help="Constant bitrate in kbps, 32..320 (default 192).")
@click.option("--vbr", type=click.IntRange(0, 9), metavar="Q",
              help="Variable bitrate quality, 0 (best) .. 9, instead of --bitrate.")
@click.option("--mono", is_flag=True, help="One channel instead of two.")
@click.option("--start", type=Position(), metavar="TIME",
              help="Trim: start the MP3 here; milliseconds (90500), seconds (90.5s) or h:mm:ss.mmm.")
@click.option("--end", type=Position(), metavar="TIME",
              help="Trim: end the MP3 here (same forms as --start); past the audio's end, it ends with it.")
@click.option("--loudness", type=click.FloatRange(-70, -5), metavar="LUFS",
              help="Normalise to this integrated loudness, -70..-5 LUFS (EBU R128; e.g. -16 for "
                   "podcasts, -14 for streaming), true peaks under -1 dBTP.")
@click.option("--cover-art", is_flag=True,
              help="Embed a picture: the file's own cover, else a representative frame of the video.")
@click.option("--split-chapters", is_flag=True,
              help="One MP3 per chapter of the video (saved next to each other, numbered).")
@click.option("-j", "--parallel", type=click.IntRange(1, 8), default=4, show_default=True,
              help="Files uploaded and followed at once.")
@click.option("--resumable-over", type=click.IntRange(0), default=64, show_default=True, metavar="MB",
              help="Files of at least this many MB are uploaded resumably (tus over HTTP): a dropped "
                   "connection is resumed, and so is the same command run again. 0: every file.")
def convert(ctx: Context, files: tuple[Path, ...], output_dir: Path | None, bitrate: int | None,
            vbr: int | None, mono: bool, start: int | None, end: int | None, loudness: float | None,
            cover_art: bool, split_chapters: bool, parallel: int, resumable_over: int) -> None:
    if bitrate is not None and vbr is not None:
        raise click.UsageError("--bitrate and --vbr exclude each other: pick one")
    if end is not None and end <= (start or 0):
        raise click.UsageError("--end must be after --start")
    options: dict = {}
    if bitrate is not None:
        options["bitrate_kbps"] = bitrate
    if vbr is not None:
        options["vbr_quality"] = vbr
    if mono:
        options["channels"] = 1
    for name, value in (("start_ms", start), ("end_ms", end), ("loudness_lufs", loudness)):
        if value is not None:
            options[name] = value
    if cover_art:
        options["cover_art"] = True
    if split_chapters:
        options["split_chapters"] = True
    ctx.session.credential()  # not logged in: say so before anything starts
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
    items = [conv.Item(path, conv.mp3_destination(path, output_dir)) for path in dict.fromkeys(files)]
    code = conv.Converter(ctx.session, options, conv.Display(ctx.console), parallel,
                          resumable_over=resumable_over * 1_000_000).run(items)
    if code:
        sys.exit(code)


@command(main, help="Download a job's MP3 (named after the video unless -o names a file); a job split by "
                    "chapter: one MP3 with --track N, else all as one ZIP. With --zip: several jobs as one ZIP.")
@click.argument("job_ids", metavar="JOB...", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="A file, or an existing directory to put it in (default: the current directory).")
@click.option("--zip", "as_zip", is_flag=True, help="The MP3s of every JOB given as one ZIP (video2mp3.zip).")
@click.option("--track", type=click.IntRange(1), metavar="N",
              help="Of a job split by chapter: chapter N's MP3 only (see `video2mp3 jobs`).")
def download(ctx: Context, job_ids: tuple[str, ...], output: Path | None, as_zip: bool, track: int | None) -> None:
    session = ctx.session
    if as_zip and track is not None:
        raise click.UsageError("--track picks one MP3 of one job; --zip takes every MP3 of the jobs given")
    if len(job_ids) > 1 and not as_zip:
        raise click.UsageError("several jobs come as one ZIP: add --zip")
    job = None
    if not as_zip:
        job = session.media.GetJob(media_pb2.GetJobRequest(job_id=job_ids[0]), metadata=session.metadata,
                                   timeout=30)
        if job.state == media_pb2.JOB_STATE_FAILED:
            raise CliError(f"job {job.job_id} failed: {job.error}")
        if job.state != media_pb2.JOB_STATE_DONE:
            raise CliError(f"job {job.job_id} is {conv.state_name(job.state).lower()} ({job.progress}%); "
                           "try again when it is done (see `video2mp3 jobs`)")

    def where(offered: str) -> Path:
        fallback = f"{Path(job.filename).stem or job.job_id}.mp3" if job is not None else "video2mp3.zip"
        name = offered or fallback
        if output is None:
            return Path(name)
        return output / name if output.is_dir() else output

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=ctx.console, disable=ctx.plain, transient=True) as bar:
        total = None
        if job is not None:
            sizes = [f.size_bytes for f in job.files if f.track == track]
            total = (sizes[0] if track and sizes else job.mp3_size_bytes) or None
        task = bar.add_task(job.filename if job is not None else f"{len(job_ids)} jobs", total=total)
        try:
            if job is None:
                path = conv.download_zip(session, list(job_ids), where, lambda n: bar.advance(task, n))
            else:
                path = conv.download(session, job.job_id, where, lambda n: bar.advance(task, n), mp3=track or 0)
        except conv.Interrupted:
            raise KeyboardInterrupt() from None
    ctx.echo(f"{path} ({conv.human_bytes(path.stat().st_size)})")


@command(main, name="jobs", help="List your jobs, newest first.")
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
def list_jobs(ctx: Context, limit: int) -> None:
    session = ctx.session
    found = session.media.ListJobs(media_pb2.ListJobsRequest(page_size=limit),
                                   metadata=session.metadata, timeout=30).jobs
    rows = [(j.job_id, conv.state_name(j.state).lower(), f"{j.progress}%",
             _when(j.create_time.ToDatetime(dt.UTC)) if j.HasField("create_time") else "",
             conv.human_bytes(j.mp3_size_bytes) if j.mp3_size_bytes else "", j.filename,
             j.error) for j in found]
    if ctx.plain:  # one tab-separated line per job, for scripts
        for row in rows:
            ctx.echo("\t".join(row))
        return
    if not rows:
        ctx.echo("No jobs yet: `video2mp3 convert FILE...` makes one.")
        return
    table = Table("JOB", "STATE", "PROGRESS", "CREATED", "MP3", "FILE", "ERROR", box=None)
    for row in rows:
        table.add_row(*row)
    ctx.console.print(table)


def _when(t: dt.datetime) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M")


@command(main, help="Show your usage against your quotas (storage, audio minutes per 24 hours) and the limits "
                    "per job.")
def usage(ctx: Context) -> None:
    session = ctx.session
    u = session.media.GetUsage(media_pb2.GetUsageRequest(), metadata=session.metadata, timeout=30)

    def of(used: str, limit: float, limit_text: str) -> str:
        return f"{used} of {limit_text}" if limit else f"{used} (no limit)"

    def frees(field: str, what: str) -> str:
        return f"; {what} {_when(getattr(u, field).ToDatetime(dt.UTC))}" if u.HasField(field) else ""

    minutes = f"{u.minutes_used:g} min"
    if u.minutes_pending:
        minutes += f" (+{u.minutes_pending:g} min waiting)"
    rows = [
        ("storage", of(conv.human_bytes(u.storage_used_bytes), u.storage_limit_bytes,
                       conv.human_bytes(u.storage_limit_bytes)) + frees("storage_free_time", "first MP3 expires")),
        ("minutes", of(minutes, u.minutes_limit, f"{u.minutes_limit:g} min per 24 h")
         + frees("minutes_free_time", "oldest leave the window")),
        ("per job", f"at most {u.max_audio_minutes_per_job:g} min of audio, "
                    f"an MP3 of at most {conv.human_bytes(u.max_mp3_bytes_per_job)}"),
    ]
    for name, text in rows:
        ctx.echo(f"{name + ':':<9}{text}")


@command(main, help="Delete a job, its video and its MP3 (a running conversion is cancelled).")
@click.argument("job_id", metavar="JOB")
def delete(ctx: Context, job_id: str) -> None:
    session = ctx.session
    try:
        session.media.DeleteJob(media_pb2.DeleteJobRequest(job_id=job_id), metadata=session.metadata, timeout=30)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise CliError("deleting jobs is not supported by this server (it has no DeleteJob)") from None
        raise
    ctx.echo(f"Deleted job {job_id}.")


# ------------------------------------------------------------------ API keys

SCOPE_NAMES = {"read": auth_pb2.API_KEY_SCOPE_READ, "write": auth_pb2.API_KEY_SCOPE_WRITE}


@main.group(
    help="API keys, for programs: a key works wherever a login does, until it is deleted. "
    "Managing them needs a login (`video2mp3 login`), not a key."
)
def keys() -> None:
    pass


@command(
    keys,
    name="create",
    help="Create an API key. The key goes to standard output, alone, and is "
    "shown this once (KEY=$(video2mp3 keys create NAME)); the rest to stderr.",
)
@click.argument("name")
@click.option("--read-only", is_flag=True, help="Only see jobs and download MP3s (scope read).")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(sorted(SCOPE_NAMES)),
    help="What the key may do (repeatable; default: read and write).",
)
def keys_create(ctx: Context, name: str, read_only: bool, scopes: tuple[str, ...]) -> None:
    chosen = {"read"} if read_only else set(scopes)
    session = ctx.session
    created = session.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(
            api_key=auth_pb2.ApiKey(display_name=name, scopes=[SCOPE_NAMES[s] for s in sorted(chosen)])
        ),
        metadata=session.metadata,
        timeout=30,
    )
    click.echo(created.key)
    click.echo(
        f"Created API key {created.api_key.id} ({name}; {_scopes_text(created.api_key)}). It is shown "
        "only now: keep it like a password. Use it as `Authorization: Bearer KEY`, or "
        "VIDEO2MP3_API_KEY=KEY for this command; `video2mp3 keys delete "
        f"{created.api_key.id}` revokes it.",
        err=True,
    )


def _scopes_text(key: auth_pb2.ApiKey) -> str:
    names = {auth_pb2.ApiKeyScope.Name(s).removeprefix("API_KEY_SCOPE_").lower() for s in key.scopes}
    if names == {"read"}:
        return "read-only"
    if names == {"write"}:
        return "write only"
    return "read and write"


@command(keys, name="list", help="List your API keys, newest first (never the keys themselves).")
def keys_list(ctx: Context) -> None:
    session = ctx.session
    found, page = [], ""
    while True:
        answer = session.auth.ListApiKeys(
            auth_pb2.ListApiKeysRequest(page_size=100, page_token=page), metadata=session.metadata, timeout=30
        )
        found += answer.api_keys
        page = answer.next_page_token
        if not page:
            break
    rows = [
        (
            k.id,
            k.display_name,
            _scopes_text(k),
            f"{k.key_prefix}…",
            _when(k.create_time.ToDatetime(dt.UTC)),
            _when(k.last_used_time.ToDatetime(dt.UTC)) if k.HasField("last_used_time") else "never",
        )
        for k in found
    ]
    if ctx.plain:
        for row in rows:
            ctx.echo("\t".join(row))
        return
    if not rows:
        ctx.echo("No API keys: `video2mp3 keys create NAME` makes one.")
        return
    table = Table("ID", "NAME", "SCOPES", "KEY", "CREATED", "LAST USED", box=None)
    for row in rows:
        table.add_row(*row)
    ctx.console.print(table)


@command(keys, name="delete", help="Delete (revoke) an API key: the server refuses it within seconds.")
@click.argument("key_id", metavar="ID")
def keys_delete(ctx: Context, key_id: str) -> None:
    session = ctx.session
    session.auth.DeleteApiKey(auth_pb2.DeleteApiKeyRequest(id=key_id), metadata=session.metadata, timeout=30)
    ctx.echo(f"Deleted API key {key_id}.")


if __name__ == "__main__":
    main(prog_name="video2mp3")
