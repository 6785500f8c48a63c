"""The `video2mp3` command as installed: the wheel a fresh clone builds, the entry point, how it
follows a job."""
from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

import testkit
from video2mp3.media.v1 import media_pb2

CLI = str(Path(sys.executable).parent / "video2mp3")


class _Unimplemented(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNIMPLEMENTED


class _FakeMedia:
    """GetJob walks through QUEUED, PROCESSING, DONE; WatchJob streams the same or is unimplemented."""

    def __init__(self, watch: str | None):
        self.calls: list[str] = []
        self.states = [media_pb2.Job(job_id="j", state=media_pb2.JOB_STATE_PROCESSING, progress=50),
                       media_pb2.Job(job_id="j", state=media_pb2.JOB_STATE_DONE, progress=100)]
        if watch == "streams":
            self.WatchJob = self._watch
        elif watch == "unimplemented":
            self.WatchJob = self._unimplemented

    def GetJob(self, request, **kw):
        self.calls.append("GetJob")
        return self.states.pop(0)

    def _watch(self, request, **kw):
        self.calls.append("WatchJob")
        assert request.job_id == "j"
        return _Stream(list(self.states))

    def _unimplemented(self, request, **kw):
        self.calls.append("WatchJob")
        return _Stream([], error=_Unimplemented())


class _Stream:
    def __init__(self, jobs, error=None):
        self.jobs, self.error = jobs, error

    def __iter__(self):
        yield from self.jobs
        if self.error:
            raise self.error

    def cancel(self):
        pass







def test_video2mp3_is_an_installed_command():
    assert Path(CLI).exists()
    r = subprocess.run([CLI, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    for code in (1, 2, 3, 4, 5, 130):
        assert re.search(rf"^\s+{code}\s+\w", r.stdout, re.M), code  # every exit code is listed


def test_a_fresh_clone_builds_a_wheel_with_the_command_and_the_stubs(tmp_path):
    """`pip install .` on a fresh clone: setup.py generates the stubs (no gen/
    yet) and the wheel declares the `video2mp3` script. (Dependencies are
    not installed here: no index needed.)"""
    import shutil
    import zipfile

    root = testkit.ROOT
    clone = tmp_path / "clone"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (root / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, clone / name)
    assert not (clone / "gen").exists()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(clone)], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("video2mp3-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "video2mp3 = video2mp3.cli.__main__:main" in entry_points
    # One name in site-packages: everything, stubs included, is under video2mp3/.
    assert {n.split("/")[0] for n in names} == {"video2mp3", wheel.name.split("-py3")[0] + ".dist-info"}
    assert {"video2mp3/cli/__main__.py", "video2mp3/media/v1/media_pb2_grpc.py",
            "video2mp3/auth/v1/auth_pb2.py"} <= names


@pytest.mark.parametrize("watch", ["streams", "unimplemented", None])
def test_following_a_job_uses_watchjob_where_it_exists_else_polls(watch, monkeypatch):
    from rich.console import Console

    from video2mp3.cli import convert

    monkeypatch.setattr(convert, "POLL_S", 0.01)
    media = _FakeMedia(watch)
    session = type("S", (), {"media": media, "metadata": [], "server": None})()
    item = convert.Item(Path("v.mp4"), Path("v.mp3"))
    converter = convert.Converter(session, {}, convert.Display(Console(file=io.StringIO())))
    converter.display.add(item)
    job = converter._follow(item, media_pb2.Job(job_id="j", state=media_pb2.JOB_STATE_QUEUED))
    assert job.state == media_pb2.JOB_STATE_DONE
    assert media.calls == {"streams": ["WatchJob"], "unimplemented": ["WatchJob", "GetJob", "GetJob"],
                           None: ["GetJob", "GetJob"]}[watch]
