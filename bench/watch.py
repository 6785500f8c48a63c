"""make bench-watch: what WatchJob costs MongoDB, with 1 and with 50 watchers.

    python -m bench.watch [--watchers 1,50] [--minutes 20]

Starts a mesh of its own (testkit/testbed.py: SecantusDB, a MySQL database
and a queue; auth, gateway, converter; no Envoy), turns on MongoDB's profiler
and, for each watcher count, uploads one job that converts for several
seconds and watches it with that many concurrent WatchJob streams until DONE.
Then counts, from system.profile, the queries on `jobs` made meanwhile:

  polls      the watch poller's `_id: {$in: [...]}` finds (one per interval
             for all watched jobs of the process)
  owner      the ownership check each WatchJob makes once as it starts
  other      everything else (the converter's reads)

and prints one line per count, with queries per second, messages per
watcher and the gateway's peak thread count and CPU time. It fails unless every watcher
saw DONE with progress 100.
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pymongo
from bson import ObjectId

from localmesh.stack import Stack
from testkit.faults import SLOW_OPTIONS, make_long_audio, user_client
from testkit.testbed import Testbed
from video2mp3.media.v1 import media_pb2

CACHE = Path(tempfile.gettempdir()) / "video2mp3-bench"


def classify(entry: dict) -> str:
    flt = (entry.get("command") or {}).get("filter") or {}
    jid = flt.get("_id")
    if isinstance(jid, dict) and "$in" in jid:
        return "polls"
    if "user_id" in flt and isinstance(jid, str):
        return "owner"
    return "other"


def run_once(stack: Stack, db, audio: Path, watchers: int) -> dict:
    client = user_client(stack)
    job = client.upload(audio, filename="long.flac", **SLOW_OPTIONS)
    results: list = [None] * watchers
    gateway = psutil.Process(stack.child("gateway").pid)
    peak_threads = [gateway.num_threads()]
    cpu0 = sum(gateway.cpu_times()[:2])
    last = db["system.profile"].find_one(sort=[("_id", -1)])
    mark = last["_id"] if last else ObjectId("0" * 24)
    start = time.monotonic()

    def watch(i):
        stream = client.media.WatchJob(media_pb2.WatchJobRequest(job_id=job.job_id),
                                       metadata=client.md, timeout=300)
        results[i] = list(stream)

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(watchers)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak_threads.append(gateway.num_threads())
        time.sleep(0.2)
    elapsed = time.monotonic() - start
    cpu = sum(gateway.cpu_times()[:2]) - cpu0
    ok = all(r and r[-1].state == media_pb2.JOB_STATE_DONE and r[-1].progress == 100 for r in results)
    counts = {"polls": 0, "owner": 0, "other": 0}
    for e in db["system.profile"].find({"_id": {"$gt": mark}, "op": "query",
                                        "ns": f"{db.name}.jobs"}):
        counts[classify(e)] += 1
    return dict(watchers=watchers, seconds=elapsed, ok=ok, peak_threads=max(peak_threads), cpu=cpu,
                messages=sum(len(r or []) for r in results) / watchers, **counts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--watchers", default="1,50")
    p.add_argument("--minutes", type=float, default=20.0, help="of audio to convert (~0.3 s each here)")
    a = p.parse_args(argv)
    CACHE.mkdir(parents=True, exist_ok=True)
    audio = CACHE / f"watch-{a.minutes:g}min.flac"
    if not audio.exists():
        make_long_audio(audio, a.minutes)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    failed = False
    with Testbed(log_dir) as bed:
        stack = Stack(bed.service_env(), log_dir=log_dir)
        try:
            stack.start(["auth", "gateway", "converter"])
            mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(bed.mongo_uri())
            db = mongo.get_default_database()
            db.command("profile", 2)
            print(f"WatchJob cost (gateway MEDIA_MAX_WORKERS / MAX_WATCHERS defaults, "
                  f"poll every {stack.env.get('WATCH_POLL_INTERVAL_S') or '0.5'} s), {a.minutes:g} min of audio:")
            for n in (int(x) for x in a.watchers.split(",")):
                r = run_once(stack, db, audio, n)
                failed |= not r["ok"]
                s = r["seconds"]
                print(f"  {n:3d} watcher(s): {s:5.1f} s watched; queries on jobs from watching: "
                      f"{r['polls']} polls = {r['polls'] / s:.1f}/s (a poller per watcher would make "
                      f"{n / 0.5:.0f}/s) + {r['owner']} one-off ownership reads; {r['other']} by the "
                      f"converter; {r['messages']:.1f} messages per watcher; gateway: peak threads "
                      f"{r['peak_threads']}, CPU {r['cpu']:.1f} s; all saw DONE/100: {r['ok']}", flush=True)
            mongo.close()
        finally:
            stack.close()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
