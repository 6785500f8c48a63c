"""`video2mp3 convert` resumes big uploads (tus over HTTP, cli/resumable.py):
a dropped connection is retried from the server's offset, and a second run of
the same command after the first was killed goes on where it stopped. Ctrl-C
terminates the upload. The CLI reaches the mesh's Envoy through a slowed-down
TCP proxy (testkit/tcp_proxy.py) that the tests cut."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from localmesh.processes import wait_for
from testkit.clients import RestClient
from testkit.ctrl_c import popen_interruptible
from testkit.media import analyse_mp3, make_media
from testkit.tcp_proxy import TcpProxy
from video2mp3.cli.session import save_token

CLI = str(Path(sys.executable).parent / "video2mp3")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return Path(make_media(tmp_path_factory.mktemp("cli-tus") / "long.mp4", video_codec="h264", duration=20.0,
                           video_size=(320, 240), video_noise=60))


@pytest.fixture
def proxy(mesh):
    host, port = mesh.envoy_addr.split(":")
    with TcpProxy(host, int(port)) as p:
        p.rate = 2e6
        yield p


@pytest.fixture
def cli(mesh, proxy, tmp_path, monkeypatch):
    """The CLI's environment (through the proxy, a config dir of its own,
    logged in) and the REST client of the same user."""
    rest = RestClient(mesh.rest_base_url)
    rest.sign_up_and_login()
    env = {**os.environ, "VIDEO2MP3_SERVER": f"127.0.0.1:{proxy.port}", "XDG_CONFIG_HOME": str(tmp_path / "config")}
    monkeypatch.setenv("XDG_CONFIG_HOME", env["XDG_CONFIG_HOME"])
    save_token(rest.token)
    return env, rest


def saved_uploads(env: dict) -> dict[str, dict]:
    path = Path(env["XDG_CONFIG_HOME"]) / "video2mp3" / "uploads.json"
    return json.loads(path.read_text()) if path.exists() else {}


def upload_url(env: dict) -> str:
    return wait_for("the upload recorded", lambda: next(iter(saved_uploads(env).values()), {}).get("url"),
                    timeout=30, interval=0.05)


def offset(mesh, rest: RestClient, url: str) -> int:
    r = requests.head(f"{mesh.rest_base_url}{url}", headers={"Authorization": f"Bearer {rest.token}",
                                                             "Tus-Resumable": "1.0.0"}, timeout=10)
    return int(r.headers["Upload-Offset"]) if r.status_code == 200 else -r.status_code


def test_a_dropped_connection_is_resumed_by_the_running_command(mesh, proxy, cli, video, tmp_path):
    env, rest = cli
    out = tmp_path / "out"
    proc = subprocess.Popen([CLI, "convert", str(video), "-o", str(out), "--resumable-over", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = upload_url(env)
    wait_for("a quarter sent", lambda: offset(mesh, rest, url) >= 0 and
             _stored(mesh, rest, url) >= video.stat().st_size // 4, timeout=60, interval=0.1)
    proxy.cut()
    wait_for("the cut PATCH recorded", lambda: offset(mesh, rest, url) > 0, timeout=30)
    proxy.rate = None
    proxy.restore()
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stdout + stderr
    mp3 = out / "long.mp3"
    assert analyse_mp3(mp3.read_bytes())[0] == pytest.approx(20.0, abs=0.2)
    assert saved_uploads(env) == {}  # forgotten once complete
    job_id = url.rsplit("/", 1)[-1]
    assert rest.get(f"/v1/jobs/{job_id}").json()["video_size_bytes"] == str(video.stat().st_size)


def _stored(mesh, rest: RestClient, url: str) -> int:
    """Bytes the server has of the upload: its tus doc's offset lags by up to a
    checkpoint, so this reads the GET answer (the same offset)."""
    r = requests.get(f"{mesh.rest_base_url}{url}", headers={"Authorization": f"Bearer {rest.token}"}, timeout=10)
    return int(r.json()["upload_offset"]) if r.status_code == 200 else 0


def test_a_second_run_goes_on_where_a_killed_one_stopped(mesh, proxy, cli, video, tmp_path):
    env, rest = cli
    out = tmp_path / "out"
    args = [CLI, "convert", str(video), "-o", str(out), "--resumable-over", "1"]
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = upload_url(env)
    wait_for("some of it stored", lambda: _stored(mesh, rest, url) >= 2 * 1024 * 1024, timeout=60, interval=0.1)
    first.kill()  # no Ctrl-C handling: the upload stays, and so does its record
    first.wait(10)
    stopped_at = wait_for("the cut PATCH recorded", lambda: (o := offset(mesh, rest, url)) > 0 and o, timeout=30)
    assert stopped_at < video.stat().st_size
    proxy.rate = None
    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"job {url.rsplit('/', 1)[-1]}" in second.stdout  # the same upload, finished
    assert (out / "long.mp3").stat().st_size > 0


def test_ctrl_c_terminates_the_upload(mesh, proxy, cli, video, tmp_path):
    env, rest = cli
    proc = popen_interruptible([CLI, "convert", str(video), "-o", str(tmp_path), "--resumable-over", "1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = upload_url(env)
    wait_for("some of it stored", lambda: _stored(mesh, rest, url) > 0, timeout=60, interval=0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "upload cancelled; nothing was kept" in stdout + stderr
    assert offset(mesh, rest, url) == -404
    assert saved_uploads(env) == {}
