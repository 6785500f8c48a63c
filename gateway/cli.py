"""Admin command of quotas per user, with the same environment as the gateway (MONGO_URI, QUOTA_*):

  python -m video2mp3.gateway quota show EMAIL                    the user's quotas, and whether set for them
  python -m video2mp3.gateway quota set EMAIL [--storage-mb N] [--minutes-per-day N]
                                                                  override them for this user (0: no limit)
  python -m video2mp3.gateway quota reset EMAIL                   back to the defaults (QUOTA_STORAGE_MB, ...)
  python -m video2mp3.gateway quota list                          every user with an override

Overrides are read at each upload and GetUsage: they apply at once, on
every gateway (gateway/quotas.py says why they live in MongoDB).
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys

import pymongo.errors

from video2mp3.core.settings import load
from video2mp3.domain.limits import size_text
from video2mp3.gateway.config import GatewayConfig
from video2mp3.gateway.quotas import COLLECTION, Allowance, Quotas
from video2mp3.storage.mongo import Mongo


def _show(email: str, a: Allowance) -> str:
    storage = size_text(a.storage_bytes) if a.storage_bytes else "no limit"
    minutes = f"{a.minutes:g} min per 24 h" if a.minutes else "no limit"
    return f"{email}: storage {storage}, audio {minutes} ({'set for this user' if a.overridden else 'the defaults'})"


def quota_cmd(a, quotas: Quotas) -> int:
    overrides = quotas.overrides
    if a.action == "list":
        for doc in overrides.find().sort("_id"):
            print(_show(doc["_id"], quotas.allowance(doc["_id"])))
        return 0
    email = a.email.strip().lower()
    if a.action == "set":
        fields = {k: v for k, v in (("storage_mb", a.storage_mb), ("minutes_per_day", a.minutes_per_day))
                  if v is not None}
        if not fields:
            print("give --storage-mb and/or --minutes-per-day", file=sys.stderr)
            return 2
        overrides.update_one({"_id": email}, {"$set": {**fields, "update_time": dt.datetime.now(dt.UTC)}},
                             upsert=True)
    elif a.action == "reset":
        overrides.delete_one({"_id": email})
    print(_show(email, quotas.allowance(email)))
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m video2mp3.gateway", description="gateway admin commands")
    sub = p.add_subparsers(dest="group", required=True)
    q = sub.add_parser("quota", help=f"quotas per user (collection {COLLECTION})")
    qs = q.add_subparsers(dest="action", required=True)
    qs.add_parser("list")
    qs.add_parser("show").add_argument("email")
    qs.add_parser("reset").add_argument("email")
    s = qs.add_parser("set")
    s.add_argument("email")
    s.add_argument("--storage-mb", type=int, metavar="N", help="storage the user may hold, MiB (0: no limit)")
    s.add_argument("--minutes-per-day", type=int, metavar="N",
                   help="audio minutes the user may convert in any 24 hours (0: no limit)")
    a = p.parse_args(argv)
    for value in (getattr(a, "storage_mb", None), getattr(a, "minutes_per_day", None)):
        if value is not None and value < 0:
            p.error("quotas are 0 (no limit) or more")
    cfg = load(GatewayConfig)
    mongo = Mongo(cfg.mongo)
    try:
        return quota_cmd(a, Quotas(mongo.db, None, cfg.quotas, cfg.limits, cfg.retention))  # type: ignore[arg-type]
    except pymongo.errors.PyMongoError as e:
        print(f"MongoDB unavailable: {e}", file=sys.stderr)
        return 1
    finally:
        mongo.close()
