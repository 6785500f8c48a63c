"""The README's sessions work as written.

The shell blocks of "A REST session (curl)", "A gRPC session (grpcurl)",
"A job's lifecycle (curl)", "A program with an API key (curl)" and "The Flask
seed's curl session" (the seed README's own commands, with the real curl) are
run with bash; "The command
line client" in a pseudo-terminal, typing the passwords it asks for, with
VIDEO2MP3_SERVER set to the mesh's Envoy. All are run in one empty directory
laid out like the repository's root (`.venv` and `testkit` linked in),
against the test mesh: the only change made to them is `localhost:8000` ->
the mesh's Envoy, and `set -euo pipefail` in front, so a command that fails
stops the session.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pexpect
import pytest
import requests

import testkit
from testkit.media import analyse_mp3, ebur128

ROOT = testkit.ROOT
README = ROOT / "README.md"
SESSIONS = ("A REST session (curl)", "A gRPC session (grpcurl)", "A job's lifecycle (curl)")
SEED_SESSION = "The Flask seed's curl session"
PROGRAM_SESSION = "A program with an API key (curl)"
CLI_SESSION = "The command line client"


def shell_blocks(section: str) -> list[str]:
    """The ```sh blocks under the `## <section>` heading."""
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README has no section '## {section}'"
    blocks = re.findall(r"^```sh\n(.*?)^```", m.group(1), re.M | re.S)
    assert blocks, f"README section '{section}' has no ```sh block"
    return blocks


def run_session(section: str, envoy_addr: str, cwd: Path) -> str:
    script = "\n".join(shell_blocks(section))
    assert "localhost:8000" in script
    script = "set -euo pipefail\n" + script.replace("localhost:8000", envoy_addr)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    r = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, (f"README session '{section}' failed ({r.returncode})\n"
                               f"--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}")
    return r.stdout


@pytest.fixture
def repo_like_dir(tmp_path) -> Path:
    for name in (".venv", "testkit"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    return tmp_path


def test_readme_sessions_run_as_written(mesh, repo_like_dir):
    rest = run_session(SESSIONS[0], mesh.envoy_addr, repo_like_dir)
    assert '"email":"ada@example.com"' in rest            # sign up and GET /v1/me
    assert '"state":"JOB_STATE_DONE"' in rest             # the job, after the wait
    assert '"filename":"demo.mp4"' in rest                # GET /v1/jobs
    assert '"status":"healthy"' in rest                   # GET /health
    duration, freq, _, _ = analyse_mp3(repo_like_dir / "demo.mp3")
    assert duration == 3.0                                # trimmed to 1.0-4.0 s, sample-exact
    assert abs(freq - 440) < 5
    assert abs(ebur128(str(repo_like_dir / "demo.mp3"))[0] + 16) <= 1.0  # loudness_lufs=-16

    grpc_out = run_session(SESSIONS[1], mesh.envoy_addr, repo_like_dir)
    for service in ("video2mp3.auth.v1.AuthService", "video2mp3.media.v1.MediaService",
                    "grpc.health.v1.Health"):
        assert service in grpc_out                          # `list` through Envoy
    assert '"email": "bob@example.com"' in grpc_out         # GetMe
    assert '"state": "JOB_STATE_DONE"' in grpc_out          # GetJob, after the wait
    assert '"status": "SERVING"' in grpc_out                # health

    life = run_session(SESSIONS[2], mesh.envoy_addr, repo_like_dir).splitlines()
    upload = [line for line in life if line.startswith('{"job_id"')]
    assert len(upload) == 1, life                           # the retried upload's answer
    job_id = json.loads(upload[0])["job_id"]
    watched = next(line for line in life if line.startswith("[{"))
    states = [j["state"] for j in json.loads(watched)]     # a whole JSON array
    assert states[-1] == "JOB_STATE_DONE", watched
    assert json.loads(watched)[-1]["progress"] == 100, watched
    assert all(j["job_id"] == job_id for j in json.loads(watched))
    listed = json.loads(next(line for line in life if line.startswith('{"jobs"')))
    assert job_id in [j["job_id"] for j in listed["jobs"]]
    assert {j["state"] for j in listed["jobs"]} == {"JOB_STATE_DONE"}
    assert "{}" in life                                     # the delete
    gone = json.loads(life[-1])                             # the second delete
    assert gone["code"] == 5, gone
    assert gone["details"][0]["reason"] == "JOB_NOT_FOUND", gone


def test_the_program_session_runs_as_written(mesh, repo_like_dir):
    """An API key alone: a tus upload cut off and resumed, and a signed job.done
    webhook (the receiver in the README verifies the signature) for its job."""
    out = run_session(PROGRAM_SESSION, mesh.envoy_addr, repo_like_dir).splitlines()
    assert "cut off" in out                                # the first PATCH did not finish
    got = next(line for line in out if line.startswith("the server has "))
    offset, size = (int(w) for w in got.split() if w.isdigit())
    assert 0 < offset < size, got                          # it stopped in the middle
    job_id = next(line.split()[1] for line in out if line.startswith("job.done "))
    assert (repo_like_dir / "events.txt").read_text().splitlines() == [f"job.done {job_id}"]
    duration, freq, _, _ = analyse_mp3(repo_like_dir / "demo-tus.mp3")
    assert abs(duration - 5.0) < 0.1
    assert abs(freq - 440) < 5


def test_readme_error_example_is_what_rest_answers(mesh):
    text = README.read_text(encoding="utf-8")
    m = re.search(r"a wrong\s+password is `(\d{3}) (\{.*?\})`", text)
    assert m, "README no longer shows the wrong-password example"
    status, body = int(m.group(1)), m.group(2)
    assert '"reason":"BAD_CREDENTIALS"' in body  # the example shows the rich details
    r = requests.post(f"{mesh.rest_base_url}/v1/login",
                      json={"email": "nobody@example.com", "password": "wrong password"}, timeout=20)
    assert (r.status_code, r.text) == (status, body)


def test_the_seeds_curl_session_runs_as_written(mesh, repo_like_dir):
    out = run_session(SEED_SESSION, mesh.envoy_addr, repo_like_dir)
    assert '"status":"healthy","mongodb":"connected","rabbitmq":"connected"' in out
    duration, freq, _, _ = analyse_mp3(repo_like_dir / "video.mp3")  # named by Content-Disposition
    assert abs(duration - 5.0) < 0.1
    assert abs(freq - 440) < 5


def test_the_cli_session_runs_as_written_in_a_terminal(mesh, repo_like_dir):
    script = "set -euo pipefail\n" + "\n".join(shell_blocks(CLI_SESSION))
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(VIDEO2MP3_SERVER=mesh.envoy_addr, XDG_CONFIG_HOME=str(repo_like_dir / "config"))
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # `video2mp3` comes from the activated .venv
    child = pexpect.spawn("bash", ["-c", script], cwd=str(repo_like_dir), env=env, encoding="utf-8",
                          timeout=180, dimensions=(40, 140))
    for _ in range(3):  # signup: twice; login: once
        child.expect(r"(Password.*|Repeat for confirmation): ")
        child.sendline("correct horse")
    child.expect(pexpect.EOF)
    child.close()
    out = child.before
    assert child.exitstatus == 0, out[-3000:]
    assert "carol@example.com (user " in out                     # whoami
    assert "holiday.mp4 -> mp3s/holiday.mp3 (" in out           # convert's summary lines
    assert "fête.mp4 -> mp3s/fête.mp3 (" in out
    assert "healthy" in out
    for name in ("holiday.mp3", "fête.mp3"):
        duration, freq, _, _ = analyse_mp3(repo_like_dir / "mp3s" / name)
        assert abs(duration - 5.0) < 0.1
        assert abs(freq - 440) < 5
