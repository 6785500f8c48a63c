"""Uploads are hostile (docs/security.md, "Uploads"): FFmpeg opens nothing but
our bytes, only through the demuxers we support, and a conversion's CPU is
bounded by the kernel as well as by its own check.

The playlists and scripts name a local HTTP server and a local file: the
server counts every request, and a file that was read would convert.
"""
from __future__ import annotations

import http.server
import io
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import av
import pytest

from testkit.media import make_media
from video2mp3.converter import transcode as transcode_module
from video2mp3.converter.transcode import ConversionError, transcode
from video2mp3.media.v1 import media_pb2


@pytest.fixture
def server():
    """A local HTTP server that records the paths asked for (and has nothing)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # the stdlib names it
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}", hits
    srv.shutdown()


@pytest.fixture
def local_clip(tmp_path) -> Path:
    return Path(make_media(tmp_path / "local.mp3", video_codec=None, audio_codec="mp3", duration=1.0))


def hostile_files(base: str, local: Path) -> dict[str, bytes]:
    return {
        "hls": (f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{base}/seg.ts\n"
                f"#EXTINF:10,\nfile://{local}\n#EXTINF:10,\nconcat:{local}|{local}\n#EXT-X-ENDLIST\n").encode(),
        "ffconcat": f"ffconcat version 1.0\nfile {base}/part.mp4\nfile {local}\nfile 'concat:{local}'\n".encode(),
        "dash": (f'<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
                 f'mediaPresentationDuration="PT10S"><Period><AdaptationSet mimeType="audio/mp4">'
                 f'<Representation id="a" bandwidth="1"><BaseURL>{base}/a.mp4</BaseURL></Representation>'
                 f"</AdaptationSet></Period></MPD>").encode(),
    }


@pytest.mark.parametrize("kind", ["hls", "ffconcat", "dash"])
def test_playlists_and_scripts_open_nothing_and_are_not_media(kind, server, local_clip):
    base, hits = server
    data = hostile_files(base, local_clip)[kind]
    with pytest.raises(ConversionError, match="not a media file"):
        transcode(io.BytesIO(data), io.BytesIO(), media_pb2.ConversionOptions(), f"video.{kind}")
    assert hits == []


def test_the_same_script_does_fetch_when_ffmpeg_is_let_open_urls(server, local_clip):
    """The control: without our whitelists FFmpeg would fetch, so the test above can tell."""
    base, hits = server
    data = hostile_files(base, local_clip)["ffconcat"]
    def demux_all() -> None:
        with av.open(io.BytesIO(data), mode="r", options={"protocol_whitelist": "file,http,tcp", "safe": "0"}) as c:
            for _ in c.demux():
                pass

    with pytest.raises(av.FFmpegError):
        demux_all()
    assert hits == ["/part.mp4"]


def test_a_demuxer_outside_the_whitelist_is_not_media(tmp_path, monkeypatch):
    wav = Path(make_media(tmp_path / "tone.wav", video_codec=None, audio_codec="pcm_s16le", duration=0.5))
    src = wav.read_bytes()
    transcode(io.BytesIO(src), io.BytesIO(), media_pb2.ConversionOptions(), "tone.wav")  # allowed: converts
    monkeypatch.setitem(transcode_module._OPEN_OPTIONS, "format_whitelist", "mov,matroska")
    with pytest.raises(ConversionError):
        transcode(io.BytesIO(src), io.BytesIO(), media_pb2.ConversionOptions(), "tone.wav")


def test_every_container_we_recognise_has_its_demuxer_whitelisted():
    allowed = set(transcode_module.FORMAT_WHITELIST.split(","))
    # FFmpeg's demuxer for each of formats/containers.py's signatures.
    for demuxer in ("mov", "matroska", "mpegts", "mpeg", "flv", "ogg", "flac", "wav", "avi", "asf", "caf",
                    "aiff", "rm", "mp3", "aac"):
        assert demuxer in allowed, demuxer
        assert demuxer in av.formats_available, demuxer
    assert not allowed & {"hls", "concat", "dash", "image2", "tee", "lavfi", "ffmetadata", "srt", "tty"}


def test_the_kernel_stops_a_conversion_past_its_cpu_budget():
    """converter/limits.py's backstop: SIGXCPU arrives once the armed budget is
    spent, even while Python is busy (here a loop that never reports); after
    disarm the soft limit is the hard one again."""
    code = textwrap.dedent("""
        import os, resource, signal, sys
        from video2mp3.converter import limits
        limits.BACKSTOP_SLACK_S = 0
        limits.arm_backstop(0.5)
        soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        assert soft != resource.RLIM_INFINITY
        limits.disarm_backstop()
        assert resource.getrlimit(resource.RLIMIT_CPU) == (hard, hard)
        signal.signal(signal.SIGXCPU, lambda *a: os._exit(42))
        limits.arm_backstop(0.5)
        start = limits.cpu_seconds()
        while limits.cpu_seconds() - start < 20:
            sum(range(10000))
        sys.exit(1)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 42, r.stderr
