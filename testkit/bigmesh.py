"""`make run` itself (python -m localmesh) on free ports, a MySQL database and
queue of its own, and an on-disk embedded SecantusDB: what bench/big.py and
tests/faults/test_big_files.py measure, with make run's defaults untouched.

    with MakeRun(tmp / "mongo", log=tmp / "make-run.log") as run:
        rest = RestClient(run.rest_base_url)
        sampler = RssSampler(run).start()    # peak RSS per process
        ...
        run.pids()      # {"mongo": [pid], "gateway": [pid], "converter": [pid, workers...], ...}
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from localmesh.processes import free_port, wait_for
from localmesh.stack import Stack
from testkit import testbed

ROOT = Path(__file__).resolve().parent.parent
PROCESS_NAMES = ("mongo", "auth", "gateway", "converter", "envoy")


class MakeRun:
    def __init__(self, data_dir: str | os.PathLike, *, log: str | os.PathLike, **env_overrides):
        self.data_dir = Path(data_dir)
        self.log_path = Path(log)
        self.overrides = {k: str(v) for k, v in env_overrides.items()}
        self.proc: subprocess.Popen | None = None
        self.mysql: dict = {}
        self.rabbit = testbed.rabbit_env()
        self.queue = f"video_big_{testbed.hex_id()}"
        self.db_name = f"v2m_big_{testbed.hex_id()}"
        self.env: dict = {}
        self.mesh: Stack | None = None  # make run's settings (addresses); its processes are the child's

    def start(self, timeout: float = 120) -> MakeRun:
        testbed.check_rabbit(self.rabbit)
        self.mysql = testbed.create_mysql_db(testbed.mysql_settings(), self.db_name)
        # The signing key next to the store, as make run keeps ./data/keys next to ./data/mongo.
        env = testbed.mesh_env(mysql=self.mysql, rabbit=self.rabbit, mongo_uri="", queue=self.queue,
                               keys_dir=self.data_dir.parent / "keys")
        # make run's own defaults: the embedded store, the default worker count, INFO logs.
        for k in ("MONGO_URI", "CONVERTER_WORKERS", "CONVERTER_EXPRESS_WORKERS", "GRACE_SECONDS"):
            env.pop(k, None)
        env.update(MONGO_PORT=str(free_port()), MONGO_DATA_DIR=str(self.data_dir), LOG_LEVEL="INFO")
        env.update(self.overrides)
        self.env = env
        self.mesh = Stack(env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "localmesh"], env=env, cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for("make run to be up", lambda: self._up() or self._died(), timeout=timeout, interval=0.3)
            if self.proc.poll() is not None:
                raise RuntimeError(f"make run exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        except BaseException:
            self.stop()
            raise
        return self

    def _up(self) -> bool:
        return "video2mp3 is up." in self.log()

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def rest_base_url(self) -> str:
        assert self.mesh is not None, "not started"
        return self.mesh.rest_base_url

    @property
    def media_addr(self) -> str:
        assert self.mesh is not None, "not started"
        return self.mesh.media_addr

    def pids(self) -> dict[str, list[int]]:
        """The live processes of the mesh by name; the converter's workers count as converter."""
        out: dict[str, list[int]] = {n: [] for n in PROCESS_NAMES}
        if self.proc is None:
            return out
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return out
        for k in kids:
            try:
                cmd = " ".join(k.cmdline())
                name = ("mongo" if "secantusd" in cmd else "envoy" if "envoy" in cmd
                        else next((n for n in ("auth", "gateway", "converter") if f"-m video2mp3.{n}" in cmd), None))
                if name:
                    out[name].append(k.pid)
                    if name == "converter":
                        out[name] += [c.pid for c in k.children(recursive=True)]
            except psutil.Error:
                continue
        return out

    def kill(self, name: str) -> int:
        """SIGKILL the main process of `name`; returns its pid."""
        pid = self.pids()[name][0]
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> int | None:
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                code = self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        testbed.delete_queues(self.rabbit, self.queue)
        if self.mysql:
            testbed.drop_mysql_db(testbed.mysql_settings(), self.db_name)
            self.mysql = {}
        return code

    def __enter__(self) -> MakeRun:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RssSampler:
    """Peak RSS per mesh process name (the largest single process of that name)."""

    def __init__(self, run: MakeRun, interval: float = 0.25):
        self.run, self.interval = run, interval
        self.peak: dict[str, int] = {n: 0 for n in PROCESS_NAMES}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for name, pids in self.run.pids().items():
                for pid in pids:
                    try:
                        rss = psutil.Process(pid).memory_info().rss
                    except psutil.Error:
                        continue
                    self.peak[name] = max(self.peak[name], rss)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(5)
        return dict(self.peak)


def disk_usage(path: str | os.PathLike[str]) -> int:
    """Bytes the files under `path` occupy."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total
