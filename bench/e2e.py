"""make bench-e2e: time to MP3 as a user sees it, against running ffmpeg yourself.

    python -m bench.e2e [--rounds 3] [--phone-rounds 2] [--skip 720p,faststart,phone,uploads,workers]
                        [--upload-mbit N]

Starts `make run` with its embedded defaults (testkit/bigmesh.MakeRun, a fresh
data folder), signs up through REST, then measures side by side in one run,
the two contenders alternating round by round (medians):

1. upload answer -> DONE for the 10-minute 720p H.264 + AAC MP4 of
   `make bench-convert` (index at the end, as most encoders write it), one job
   at a time, against `ffmpeg -i F -vn -c:a libmp3lame -b:a 192k out.mp3`.
2. The same video remuxed with its index first (faststart), uploaded through
   REST: converted while it arrives.
3. A phone-sized video: 10-minute 1080p ~20 Mbit/s H.264 + AAC (~1.5 GB), in
   both layouts: (a) as phones record it (about 1 s of each track per chunk,
   index at the end: testkit/mp4_layout.py), and (b) as ffmpeg writes it
   (`-c copy`: audio and video interleaved frame by frame, index at the end),
   where every GridFS chunk holds audio and the converter must read all of
   it back; for (b) also the floor: the same file read back from the store
   alone, nothing decoded, against ffmpeg. Also the bytes each conversion
   fetched from GridFS.
4. Uploads: REST through Envoy and gRPC direct against a raw GridFSBucket
   upload of the same file to the same server (bench/uploads.py), and the
   gateway's peak RSS during a 2 GB upload.
5. Workers: 8 equal jobs on 2 workers against 1 worker (bench/workers.py).

"DONE" is the job's own complete_time (the server's clock; this machine's),
read by polling GetJob 4 times a second; a job DONE before its upload was
answered counts 0 s.
`--upload-mbit N` paces the REST uploads to N Mbit/s, as a client on a
network would send them (by default they go as fast as loopback allows, and
the client, Envoy, the gateway and the store share the two cores). Each
round also prints the upload's time and the mesh's CPU seconds from upload
start to DONE: what copying an upload as it arrives (converter/spool.py)
moves into the upload.
Every figure is printed with its goal beside it. Tests never assert times;
this prints them. The machine has 2 cores: run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from bench.convert import ensure_ffmpeg, make_inputs, run_ffmpeg
from testkit import prom
from testkit.bigmesh import MakeRun
from testkit.clients import RestClient
from testkit.media import make_phone_video
from testkit.mp4_layout import interleave

CACHE = Path(tempfile.gettempdir()) / "video2mp3-bench"
BIG = Path(tempfile.gettempdir()) / "video2mp3-big"


# --- Inputs ----------------------------------------------------------------------

def faststart_copy(ffmpeg: str, src: Path) -> Path:
    """The same streams, index first (`-movflags +faststart`), made once."""
    dst = src.with_name(src.stem + "_faststart.mp4")
    if not dst.exists():
        tmp = dst.with_suffix(".part.mp4")
        subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(src),
                        "-c", "copy", "-movflags", "+faststart", str(tmp)], check=True)
        tmp.rename(dst)
    return dst


def phone_video() -> Path:
    """1080p ~20 Mbit/s laid out as a phone writes it: ~1 s per chunk, index at the end, made once."""
    dst = BIG / "phone-10min-20mbit-1s-chunks.mp4"
    if not dst.exists():
        BIG.mkdir(parents=True, exist_ok=True)
        muxed = make_phone_video(BIG / "phone-10min-20mbit.mp4")  # shared with make bench-big
        print(f"laying out {dst.name} as a phone writes it ...", flush=True)
        tmp = dst.with_suffix(".part.mp4")
        interleave(muxed, tmp, seconds=1.0, index_first=False)
        tmp.rename(dst)
    return dst


def frame_interleaved_phone(ffmpeg: str) -> Path:
    """The same 1080p streams as ffmpeg writes them (`-c copy`): audio and video
    interleaved frame by frame, index at the end, made once. Every GridFS
    chunk holds some audio, so nothing can be skipped."""
    dst = BIG / "phone-10min-20mbit-ffmpeg.mp4"
    if not dst.exists():
        BIG.mkdir(parents=True, exist_ok=True)
        muxed = make_phone_video(BIG / "phone-10min-20mbit.mp4")
        print(f"remuxing {dst.name} with ffmpeg ...", flush=True)
        tmp = dst.with_suffix(".part.mp4")
        subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(muxed), "-c", "copy",
                        str(tmp)], check=True)
        tmp.rename(dst)
    return dst


# --- Timing ----------------------------------------------------------------------

class Paced:
    """A file sent at `bytes_per_s` (requests streams it with its length)."""

    def __init__(self, path: Path, bytes_per_s: float):
        self.f = open(path, "rb")  # noqa: SIM115 - closed by read() at the end
        self.size = path.stat().st_size
        self.rate = bytes_per_s
        self.sent = 0
        self.start = 0.0

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        if not self.start:
            self.start = time.monotonic()
        ahead = self.sent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)
        data = self.f.read(min(n if n > 0 else 1 << 20, 1 << 20))
        self.sent += len(data)
        if not data:
            self.f.close()
        return data


class Mesh:
    """A user of the running mesh: REST uploads, DONE times, converter metrics."""

    def __init__(self, run: MakeRun, upload_mbit: float = 0):
        self.run = run
        self.upload_mbit = upload_mbit
        self.rest = RestClient(run.rest_base_url)
        self.rest.sign_up_and_login()
        assert run.mesh is not None
        self.converter_metrics = run.mesh.metrics_urls["converter"]
        self.last_cpu = 0.0  # CPU seconds of the mesh from the last answer to its DONE seen

    def read_bytes(self) -> float:
        """Video bytes the converter has fetched from GridFS so far (all conversions)."""
        return prom.scrape(self.converter_metrics).value("video2mp3_conversion_read_bytes_sum")

    def answer_to_done(self, path: Path) -> tuple[float, float]:
        """(upload answer -> DONE in seconds, bytes the conversion fetched)."""
        before = self.read_bytes()
        started, cpu_start = time.monotonic(), mesh_cpu(self.run)
        if self.upload_mbit:
            r = self.rest.s.post(f"{self.rest.base}/v1/videos", params={"filename": path.name},
                                 data=Paced(path, self.upload_mbit * 1e6 / 8),
                                 headers={**self.rest.headers(), "Content-Type": "video/mp4"}, timeout=600)
        else:
            r = self.rest.upload(path, timeout=600)
        answered = dt.datetime.now(dt.UTC)
        upload_s = time.monotonic() - started
        cpu0 = mesh_cpu(self.run)
        assert r.status_code == 200, r.text
        job_id = r.json()["job_id"]
        while True:
            job = self.rest.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in ("JOB_STATE_DONE", "JOB_STATE_FAILED"):
                break
            # DONE is the job's own complete_time, so polling slowly costs no
            # accuracy, and leaves the cores to the conversion being timed.
            time.sleep(0.25)
        assert job["state"] == "JOB_STATE_DONE", job
        self.last_cpu = mesh_cpu(self.run) - cpu0
        # What moving work into the upload (converter/spool.py) costs there.
        print(f"      upload {upload_s:.2f} s; upload start -> DONE seen: {mesh_cpu(self.run) - cpu_start:.1f} "
              "CPU s of the mesh", flush=True)
        done = dt.datetime.fromisoformat(job["complete_time"].replace("Z", "+00:00"))
        # The metric is written a moment after the job's DONE; wait for it.
        deadline = time.monotonic() + 10
        while self.read_bytes() == before and time.monotonic() < deadline:
            time.sleep(0.05)
        fetched = self.read_bytes() - before
        self.rest.s.delete(f"{self.rest.base}/v1/jobs/{job_id}", headers=self.rest.headers(), timeout=60)
        return max(0.0, (done - answered).total_seconds()), fetched


def store_raw(db, path: Path):
    """`path` written straight into GridFS as the gateway writes an upload
    (our chunk writer, stored behind the reads): its file id."""
    from video2mp3.storage.gridfs_upload import ChunkedUpload
    from video2mp3.storage.mongo import VIDEOS_BUCKET

    up = ChunkedUpload(db, VIDEOS_BUCKET, path.name)
    up.write_behind()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            up.write(piece)
    up.close()
    return up._id


def read_whole(db, file_id) -> None:
    """A stored file read back whole the way the converter reads it
    (converter/video_source.py: ranges of chunks, fetched ahead), nothing decoded."""
    from video2mp3.converter.video_source import VideoSource

    with VideoSource(db, file_id) as video:
        while video.stream.read(1 << 20):
            pass


def store_client(run: MakeRun):
    """A pymongo client of make run's embedded store."""
    import pymongo

    return pymongo.MongoClient(f"mongodb://127.0.0.1:{run.env['MONGO_PORT']}/?directConnection=true")


def read_back(run: MakeRun, path: Path) -> tuple[float, float]:
    """The floor of a conversion that must read every byte: the file stored
    straight into make run's GridFS (not timed), then read back whole,
    nothing decoded: (seconds, CPU seconds of the store and the reader)."""
    from video2mp3.storage.gridfs_download import delete_file
    from video2mp3.storage.mongo import VIDEOS_BUCKET

    client = store_client(run)
    try:
        db = client["video2mp3"]
        file_id = store_raw(db, path)
        settle(run)
        cpu0 = mesh_cpu(run) + sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        t = time.perf_counter()
        read_whole(db, file_id)
        seconds = time.perf_counter() - t
        cpu = mesh_cpu(run) + sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu0
        delete_file(db, VIDEOS_BUCKET, file_id)
        return seconds, cpu
    finally:
        client.close()


def mesh_cpu(run: MakeRun) -> float:
    """CPU seconds (user + system) the mesh's processes have used so far."""
    total = 0.0
    for pids in run.pids().values():
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                total += sum(psutil.Process(pid).cpu_times()[:2])
    return total


def ffmpeg_cpu(run_ffmpeg) -> tuple[float, float]:
    """(seconds, CPU seconds) of one ffmpeg run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = run_ffmpeg()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def settle(run: MakeRun, idle_cpu: float = 0.1, timeout: float = 60) -> None:
    """Wait until the mesh is idle (its processes use < idle_cpu of a core
    over half a second): the previous job's deletes and the store's checkpoint
    must not land on the next contender, whichever it is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = []
        for pids in run.pids().values():
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    procs.append(psutil.Process(pid))
        before = {p.pid: sum(p.cpu_times()[:2]) for p in procs if p.is_running()}
        time.sleep(0.5)
        used = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                used += sum(p.cpu_times()[:2]) - before.get(p.pid, 0.0)
        if used / 0.5 < idle_cpu:
            return


def compare(label: str, rounds: int, ffmpeg_run, mesh_run, run: MakeRun) -> dict:
    """Alternate ffmpeg and the mesh `rounds` times (order rotated), each on an
    idle mesh; medians."""
    ff, e2e, fetched, ff_cpu, e2e_cpu = [], [], [], [], []
    for i in range(rounds):
        order = ("ffmpeg", "mesh") if i % 2 == 0 else ("mesh", "ffmpeg")
        for who in order:
            settle(run)
            if who == "ffmpeg":
                seconds, cpu = ffmpeg_cpu(ffmpeg_run)
                ff.append(seconds)
                ff_cpu.append(cpu)
            else:
                seconds, got, cpu = mesh_run()
                e2e.append(seconds)
                fetched.append(got)
                e2e_cpu.append(cpu)
        print(f"    {label} round {i + 1}: ffmpeg {ff[-1]:.2f} s ({ff_cpu[-1]:.1f} CPU s), upload answer -> DONE "
              f"{e2e[-1]:.2f} s ({e2e_cpu[-1]:.1f} CPU s of the mesh), fetched {fetched[-1] / 1e6:.0f} MB",
              flush=True)
    return {"ffmpeg": statistics.median(ff), "e2e": statistics.median(e2e),
            "fetched": statistics.median(fetched), "ffmpeg_cpu": statistics.median(ff_cpu),
            "e2e_cpu": statistics.median(e2e_cpu)}


def upload_rows(run: MakeRun, video: Path, rounds: int) -> list[tuple[str, str, str]]:
    """bench/uploads.py's figures as summary rows, and the 2 GB upload's gateway RSS."""
    from bench import uploads

    result = uploads.measure_uploads(run, video, rounds=rounds, say=lambda m: print("  " + m, flush=True))
    raw = result["median_s"]["raw"]
    rows = [(f"upload {uploads.LABELS[way]} / raw GridFS",
             f"{raw:.2f} s / {result['median_s'][way]:.2f} s = {result['ratio'][way]:.2f}x",
             f">= {result['goal'][way]:.2f}x: {verdict(result['ratio'][way], result['goal'][way], True)}")
            for way in result["median_s"] if way != "raw"]
    big = uploads.random_file(CACHE / "random2000mb.bin", 2000 * 10**6)
    rss = uploads.measure_upload_rss(run, big)
    peak = rss["peak_mb"]["gateway"]
    rows.append(("gateway peak RSS, 2 GB REST upload", f"{peak:.0f} MB",
                 f"< {uploads.RSS_GOAL_MB} MB: {verdict(peak, uploads.RSS_GOAL_MB)}"))
    return rows


# --- Main --------------------------------------------------------------------------

def verdict(value: float, goal: float, at_least: bool = False) -> str:
    ok = value >= goal if at_least else value <= goal
    return "goal met" if ok else "GOAL MISSED"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--phone-rounds", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma-separated: 720p, faststart, phone, uploads, workers")
    ap.add_argument("--upload-mbit", type=float, default=0, help="pace REST uploads to this many Mbit/s")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    ffmpeg = ensure_ffmpeg()
    video = make_inputs(CACHE)["long"]
    fast = faststart_copy(ffmpeg, video)
    phone = None if "phone" in skip else phone_video()
    phone_ff = None if "phone" in skip else frame_interleaved_phone(ffmpeg)
    out = CACHE / "e2e-ffmpeg-out.mp3"
    print(f"CPUs: {os.cpu_count()}; inputs: {video.name} ({video.stat().st_size / 1e6:.0f} MB), "
          f"{fast.name}" + (f", {phone.name} ({phone.stat().st_size / 1e6:.0f} MB)" if phone else ""))

    rows: list[tuple[str, str, str]] = []  # (figure, measured, goal + verdict)
    data_dir = Path(tempfile.mkdtemp(prefix="video2mp3-e2e-"))
    try:
        with MakeRun(data_dir / "mongo", log=data_dir / "make-run.log") as run:
            mesh = Mesh(run, args.upload_mbit)
            mesh.answer_to_done(CACHE / "clip10s_v1.mp4")  # warm-up: imports, caches, first job
            def time_to_mp3(label: str, path: Path, goal: float, rounds: int, fetched: bool) -> None:
                r = compare(label, rounds, lambda: run_ffmpeg(ffmpeg, path, out),
                            lambda: (*mesh.answer_to_done(path), mesh.last_cpu), run)
                ratio = r["e2e"] / r["ffmpeg"]
                rows.append((f"{label} answer -> DONE / ffmpeg",
                             f"{r['e2e']:.2f} s / {r['ffmpeg']:.2f} s = {ratio:.2f}",
                             f"<= {goal}: {verdict(ratio, goal)}"))
                rows.append((f"{label} CPU seconds, mesh / ffmpeg",
                             f"{r['e2e_cpu']:.1f} / {r['ffmpeg_cpu']:.1f} = {r['e2e_cpu'] / r['ffmpeg_cpu']:.2f}", ""))
                if fetched:
                    size = path.stat().st_size
                    rows.append((f"{label} bytes fetched from GridFS",
                                 f"{r['fetched'] / 1e6:.0f} MB of {size / 1e6:.0f} MB "
                                 f"({100 * r['fetched'] / size:.1f} %)", ""))

            if "720p" not in skip:
                print("\n1. 10-minute 720p, index at the end: upload answer -> DONE vs ffmpeg")
                time_to_mp3("720p", video, 1.0, args.rounds, fetched=True)
            if "faststart" not in skip:
                print("\n2. the same, faststart, through REST: converted while it arrives")
                time_to_mp3("faststart", fast, 0.25, args.rounds, fetched=False)
            if phone is not None and phone_ff is not None:
                print("\n3a. phone-sized 1080p as phones write it (1 s chunks, index at the end)")
                time_to_mp3("phone", phone, 1.0, args.phone_rounds, fetched=True)
                print("\n3b. phone-sized 1080p as ffmpeg writes it (frame-interleaved, index at the end)")
                time_to_mp3("phone, frame-interleaved", phone_ff, 1.0, args.phone_rounds, fetched=True)
                reads = [read_back(run, phone_ff) for _ in range(args.phone_rounds)]
                ffs = [ffmpeg_cpu(lambda: run_ffmpeg(ffmpeg, phone_ff, out)) for _ in range(args.phone_rounds)]
                floor, floor_cpu = (statistics.median(x) for x in zip(*reads, strict=True))
                ff, ff_cpu = (statistics.median(x) for x in zip(*ffs, strict=True))
                print(f"    read back alone: {' '.join(f'{x:.2f} s ({c:.1f} CPU s)' for x, c in reads)}; "
                      f"ffmpeg {ff:.2f} s ({ff_cpu:.1f} CPU s)", flush=True)
                rows.append(("frame-interleaved floor: read back alone / ffmpeg",
                             f"{floor:.2f} s / {ff:.2f} s = {floor / ff:.2f}", "(every byte read back)"))
                rows.append(("frame-interleaved floor, CPU seconds",
                             f"{floor_cpu:.1f} / {ff_cpu:.1f} = {floor_cpu / ff_cpu:.2f}", ""))

            if "uploads" not in skip:
                print("\n4. uploads of the 720p file: raw GridFSBucket vs gRPC direct vs REST")
                rows += upload_rows(run, video, args.rounds)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    if "workers" not in skip:
        from bench.workers import compare_workers

        print("\n5. workers: 8 jobs on 1 and 2 workers, default settings")
        rows += compare_workers(jobs=8, runs=2, minutes=5)

    width = max(len(r[0]) for r in rows)
    print("\nbench-e2e summary")
    for figure, measured, goal in rows:
        print(f"    {figure:<{width}}  {measured:<40} {goal}")


if __name__ == "__main__":
    main()
