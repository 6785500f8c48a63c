"""The `video2mp3` command, as installed (.venv/bin/video2mp3, the
[project.scripts] entry point), against the running mesh: login, convert in a
pseudo-terminal (bars) and through a pipe (plain lines), every exit code, and
Ctrl-C during an upload (nothing left on the server) and during a conversion
(the job goes on and `video2mp3 download` fetches it), split by chapter and
`download --zip`."""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import grpc
import pexpect
import pytest

from localmesh.processes import free_port, wait_for
from testkit import outside, testbed
from testkit.clients import unique_email
from testkit.ctrl_c import popen_interruptible
from testkit.media import analyse_mp3, decode_audio, ebur128, make_media, make_noise
from video2mp3.auth.keys import generate as generate_key
from video2mp3.cli.session import token_claims
from video2mp3.core import tokens
from video2mp3.media.v1 import media_pb2, media_pb2_grpc

CLI = str(Path(sys.executable).parent / "video2mp3")
PASSWORD = "correct horse 1"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def env(mesh, tmp_path) -> dict:
    """The CLI's environment: the mesh's Envoy, a config dir of its own."""
    return {**os.environ, "VIDEO2MP3_SERVER": mesh.envoy_addr, "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "COLUMNS": "140"}


def run(env: dict, *args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=env, input=stdin, capture_output=True, text=True, timeout=timeout)


def signed_up(env: dict) -> str:
    email = unique_email("cli")
    r = run(env, "signup", "--email", email, "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    return email


@pytest.fixture
def user(env) -> str:
    """Signed up and logged in (token saved in env's config dir)."""
    email = signed_up(env)
    r = run(env, "login", "--email", email, "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    return email


def token_file(env: dict) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "video2mp3" / "token"


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    """60 s of 440 Hz PCM (~11 MB): an upload long enough to watch."""
    path = tmp_path_factory.mktemp("cli") / "tone.wav"
    make_media(path, video_codec=None, audio_codec="pcm_s16le", duration=60.0)
    return path






def test_login_prompts_hides_the_password_and_keeps_the_token_private(env):
    email = signed_up(env)
    child = pexpect.spawn(CLI, ["login"], env=env, encoding="utf-8", timeout=60)
    child.expect("Email: ")
    child.sendline(email)
    child.expect("Password: ")
    child.sendline(PASSWORD)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert f"Logged in as {email}" in child.before
    assert PASSWORD not in child.before  # not echoed
    path = token_file(env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert token_claims(path.read_text().strip())["email"] == email
    r = run(env, "whoami")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(email), r.stderr


def test_convert_two_files_at_once_in_a_terminal(env, user, clip, wav, tmp_path):
    unicode_clip = tmp_path / "fête à Paris.mp4"
    unicode_clip.write_bytes(Path(clip).read_bytes())
    out = tmp_path / "mp3s"
    child = pexpect.spawn(CLI, ["convert", str(wav), str(unicode_clip), "-o", str(out), "--bitrate", "128"],
                          env=env, encoding="utf-8", timeout=180, dimensions=(30, 140))
    child.expect(pexpect.EOF)
    child.close()
    screen = ANSI.sub("", child.before)
    assert child.exitstatus == 0, screen[-3000:]
    # rich's bars: phase, name, bytes sent of the total, speed, ETA, then the conversion.
    assert re.search(r"uploading\s+tone\.wav .*\d+\.\d/11\.5 MB .*/s eta", screen), screen[-3000:]
    assert re.search(r"converting\s+(tone\.wav|fête à Paris\.mp4) .*\d+%", screen)
    assert "━" in screen
    for name in ("tone.mp3", "fête à Paris.mp3"):
        mp3 = out / name
        assert f"-> {mp3} (" in screen  # the one-line summary
        assert abs(analyse_mp3(mp3)[1] - 440) < 5
    assert abs(analyse_mp3(out / "tone.mp3")[0] - 60.0) < 0.1


def test_convert_prints_plain_lines_when_not_a_terminal(env, mesh, user, clip, tmp_path):
    video = tmp_path / "plain.mp4"
    video.write_bytes(Path(clip).read_bytes())
    envoy_log = mesh.logs["envoy"]
    seen = envoy_log.stat().st_size
    r = run(env, "convert", str(video), "--mono")  # the MP3 goes next to the video
    assert r.returncode == 0, r.stderr
    # It followed the job through WatchJob's stream, not by polling GetJob.
    def calls() -> list[tuple[str, str]]:  # Envoy's JSON access log since (flushed every 0.5 s)
        lines = envoy_log.read_bytes()[seen:].decode(errors="replace").splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{") and '"service"' in line]
        return [(e.get("grpc_path", ""), str(e.get("status"))) for e in entries]

    wait_for("the WatchJob call in Envoy's access log",
             lambda: ("/video2mp3.media.v1.MediaService/WatchJob", "200") in calls(), timeout=10)
    assert not any(path.endswith("MediaService/GetJob") for path, _ in calls())
    assert "\x1b" not in r.stdout
    assert "━" not in r.stdout
    lines = r.stdout.splitlines()
    assert lines[0] == "plain.mp4: uploading 85.2 kB" or lines[0].startswith("plain.mp4: uploading ")
    assert re.fullmatch(r"plain\.mp4: uploaded as job [0-9a-f]{32}", lines[1])
    assert lines[-1].startswith(f"plain.mp4 -> {tmp_path / 'plain.mp3'} (")
    assert analyse_mp3(tmp_path / "plain.mp3")[3] == 1  # --mono

    r = run(env, "jobs")
    job_id, state, progress, *_ = r.stdout.splitlines()[0].split("\t")
    assert (state, progress) == ("done", "100%")
    r = run(env, "download", job_id, "-o", str(tmp_path / "again.mp3"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "again.mp3").read_bytes() == (tmp_path / "plain.mp3").read_bytes()

    # delete: the job, its video and its MP3 go (DeleteJob); a second delete is "not found".
    r = run(env, "delete", job_id)
    assert (r.returncode, r.stdout.strip()) == (0, f"Deleted job {job_id}."), r.stderr
    assert job_id not in run(env, "jobs").stdout
    r = run(env, "download", job_id)
    assert r.returncode == 1
    assert "not found" in r.stderr
    r = run(env, "delete", job_id)
    assert r.returncode == 1
    assert "not found" in r.stderr


@pytest.mark.parametrize("resumable_over", ["64", "0"])  # over gRPC, then over tus
def test_convert_trims_and_normalises(env, user, tmp_path, resumable_over):
    video = Path(make_noise(tmp_path / "noise.m4a", 5.0, level=0.05))
    r = run(env, "convert", str(video), "--start", "0:00.75", "--end", "3250", "--loudness", "-16",
            "--resumable-over", resumable_over)
    assert r.returncode == 0, r.stderr
    mp3 = (tmp_path / "noise.mp3").read_bytes()
    decoded, rate, _ = decode_audio(mp3)
    assert len(decoded) == 2.5 * rate
    assert abs(ebur128(mp3)[0] + 16) <= 1.0
    assert run(env, "convert", str(video), "--start", "soon").returncode == 2
    assert run(env, "convert", str(video), "--start", "2s", "--end", "1s").returncode == 2
    assert run(env, "convert", str(video), "--loudness", "0").returncode == 2


def test_exit_codes(env, mesh, clip, tmp_path):
    # 2: bad usage (click's)
    assert run(env, "convert").returncode == 2
    assert run(env, "convert", str(clip), "--bitrate", "128", "--vbr", "2").returncode == 2
    assert run(env, "convert", str(clip), "--bitrate", "8").returncode == 2
    assert run(env, "--server", "ftp://x", "health").returncode == 2

    # 3: not logged in, expired, or a token the server refuses; wrong password
    r = run(env, "jobs")
    assert r.returncode == 3
    assert "run `video2mp3 login`" in r.stderr
    email = signed_up(env)
    r = run(env, "login", "--email", email, "--password-stdin", stdin="wrong password\n")
    assert r.returncode == 3
    assert "incorrect email or password" in r.stderr
    path = token_file(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = testbed.signing_key(mesh.env)
    path.write_text(tokens.issue(key.private_key, key.kid, "1", email, 60, now=time.time() - 3600))
    r = run(env, "convert", str(clip))
    assert r.returncode == 3
    assert "expired" in r.stderr
    other = generate_key()  # not the server's key
    path.write_text(tokens.issue(other.private_key, other.kid, "1", email, 600))
    r = run(env, "jobs")
    assert r.returncode == 3
    assert "run `video2mp3 login`" in r.stderr

    # 4: nothing listens there
    r = run(env, "--server", f"127.0.0.1:{free_port()}", "health")
    assert r.returncode == 4
    assert "cannot reach" in r.stderr
    assert "--server" in r.stderr

    # 1: the server says no
    r = run(env, "login", "--email", email, "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0
    r = run(env, "download", "0" * 32)
    assert r.returncode == 1
    assert "not found" in r.stderr
    r = run(env, "delete", "0" * 32)
    assert r.returncode == 1
    assert "not found" in r.stderr

    # 5: one of the conversions failed; the other still arrives
    bad = tmp_path / "noise.mp4"
    bad.write_bytes(os.urandom(64 * 1024))
    good = tmp_path / "good.mp4"
    good.write_bytes(Path(clip).read_bytes())
    r = run(env, "convert", str(bad), str(good))
    assert r.returncode == 5, r.stdout + r.stderr
    assert re.search(r"^noise\.mp4: FAILED while converting \(job [0-9a-f]+\): conversion failed: ",
                     r.stdout, re.M), r.stdout
    assert (tmp_path / "good.mp3").exists()
    assert not (tmp_path / "noise.mp3").exists()


def test_ctrl_c_during_an_upload_leaves_nothing_on_the_server(env, user, store, tmp_path):
    big = tmp_path / "big.mp4"
    with open(big, "wb") as f:  # sparse: big to send, instant to make
        f.truncate(400 * 1024 * 1024)
    user_id = token_claims(token_file(env).read_text().strip())["sub"]
    chunks = store.db["videos.chunks"]
    before = set(chunks.distinct("files_id"))
    proc = popen_interruptible([CLI, "convert", str(big)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        new = wait_for("the upload to reach GridFS", lambda: set(chunks.distinct("files_id")) - before,
                       timeout=30, interval=0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, out + err
    assert "big.mp4: upload cancelled; nothing was kept on the server" in out
    wait_for("the cancelled upload's chunks to be deleted",
             lambda: chunks.count_documents({"files_id": {"$in": list(new)}}) == 0, timeout=30)
    assert store.db["videos.files"].count_documents({"metadata.user_id": user_id}) == 0
    assert store.jobs.count_documents({"user_id": user_id}) == 0


def test_ctrl_c_during_a_conversion_leaves_the_job_running(env, user, mesh_control, clip, tmp_path):
    video = tmp_path / "later.mp4"
    video.write_bytes(Path(clip).read_bytes())
    mesh_control.stop_service("converter")  # the job waits QUEUED: Ctrl-C lands while following it
    proc = popen_interruptible([CLI, "convert", str(video)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("later.mp4: converting"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        mesh_control.start_service("converter")
    assert proc.returncode == 130, out + err
    m = re.search(r"later\.mp4: job ([0-9a-f]{32}) keeps converting on the server; fetch the MP3 later "
                  r"with `video2mp3 download \1 -o (.*)`", out)
    assert m, out
    assert not (tmp_path / "later.mp3").exists()

    job_id = m.group(1)
    wait_for("the job to be done", lambda: run(env, "jobs").stdout.startswith(f"{job_id}\tdone"),
             timeout=120, interval=1)
    r = run(env, "download", job_id, "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(str(tmp_path / "later.mp3"))  # named after the upload
    assert abs(analyse_mp3(tmp_path / "later.mp3")[1] - 440) < 5


def test_tls_with_a_private_ca(env, tmp_path):
    """--server https://... with --ca FILE trusts that CA; the system roots do not."""
    from concurrent import futures

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)

    class Health(media_pb2_grpc.MediaServiceServicer):
        def GetHealth(self, request, context):
            return media_pb2.GetHealthResponse(status="healthy", mongodb="connected", rabbitmq="connected",
                                               mysql="connected")

    server = grpc.server(futures.ThreadPoolExecutor(2))
    media_pb2_grpc.add_MediaServiceServicer_to_server(Health(), server)
    port = server.add_secure_port("localhost:0", grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    server.start()
    try:
        r = run(env, "--server", f"https://localhost:{port}", "--ca", str(cert), "health", timeout=60)
        assert r.returncode == 0, r.stderr
        assert "status:   healthy" in r.stdout, r.stderr
        r = run(env, "--server", f"https://localhost:{port}", "health", timeout=60)  # system roots
        assert r.returncode == 4, r.stdout + r.stderr
    finally:
        server.stop(0)


def test_split_chapters_cover_art_and_download_zip(env, user, tmp_path):
    chapters = [(0, 1500, "One"), (1500, 3000, "Two")]
    video = outside.make_chaptered_video(tmp_path / "talk.mp4", chapters)
    r = run(env, "convert", str(video), "--split-chapters", "--cover-art")
    assert r.returncode == 0, r.stderr
    assert "2 MP3s in" in r.stdout.splitlines()[-1]
    parts = [tmp_path / "talk - 01 - One.mp3", tmp_path / "talk - 02 - Two.mp3"]
    assert [outside.probe(p)["format"]["tags"]["track"] for p in parts] == ["1/2", "2/2"]
    assert any(s["codec_type"] == "video" for s in outside.probe(parts[0])["streams"])  # the cover

    r = run(env, "convert", str(video), "-o", str(tmp_path / "whole"))
    assert r.returncode == 0, r.stderr
    assert outside.chapters(tmp_path / "whole" / "talk.mp3") == chapters
    ids = [line.split("\t")[0] for line in run(env, "jobs").stdout.splitlines()[:2]]
    r = run(env, "download", "--zip", *ids, "-o", str(tmp_path / "all.zip"))
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(tmp_path / "all.zip") as z:
        assert z.read("talk.mp3") == (tmp_path / "whole" / "talk.mp3").read_bytes()
        assert z.read("talk/talk - 02 - Two.mp3") == parts[1].read_bytes()
    r = run(env, "download", ids[1], "--track", "2", "-o", str(tmp_path / "two.mp3"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "two.mp3").read_bytes() == parts[1].read_bytes()
    r = run(env, "download", *ids)
    assert r.returncode == 2
    assert "--zip" in r.stderr
