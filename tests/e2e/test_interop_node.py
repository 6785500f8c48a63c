"""Stubs in another language: the Node.js client (@grpc/grpc-js, from npm via
`make test`) runs the journey through Envoy and its MP3 is the source's tone."""
from __future__ import annotations

import json
import shutil
import subprocess

import testkit
from testkit.media import analyse_mp3, audio_duration, make_media

ROOT = testkit.ROOT


def test_node_client_journey_through_envoy(mesh, tmp_path):
    node = shutil.which("node")
    assert node, "Node.js is needed for the interop test (the machine ships Node 20)"
    assert (ROOT / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run `npm ci` (make test does)"
    video = make_media(tmp_path / "node.mp4", container="mp4", video_codec="h264", duration=2.0)
    out = tmp_path / "node.mp3"
    run = subprocess.run([node, str(ROOT / "tests" / "interop" / "node_client.js"), mesh.envoy_addr,
                          str(video), str(out)], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["state"] == "JOB_STATE_DONE", result
    assert result["mp3_bytes"] == out.stat().st_size > 0
    duration, freq, _, _ = analyse_mp3(out)
    assert abs(duration - audio_duration(video)) <= 0.1
    assert abs(freq - 440) < 5
