"""Admin commands, with the same environment as the service (MYSQL_*, AUTH_KEYS_DIR, ...):

  python -m video2mp3.auth keys new --dir DIR       first signing key (refuses if DIR has one)
  python -m video2mp3.auth keys rotate --dir DIR    add the next signing key (see auth/keys.py)
  python -m video2mp3.auth keys list --dir DIR      each key and whether it signs, is published or retired
  python -m video2mp3.auth keys prune --dir DIR     delete the files of retired keys
  python -m video2mp3.auth users create EMAIL       password from stdin, or prompted twice on a terminal
  python -m video2mp3.auth users list
  python -m video2mp3.auth users delete EMAIL       the user's jobs, videos and MP3s too (needs
                                          AUTH_KEYS_DIR and MEDIA_ADDR), unless --account-only
"""
from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from pathlib import Path

import grpc

from video2mp3.auth import tables
from video2mp3.auth.config import AuthConfig
from video2mp3.auth.keys import configured_ring, generate, load_dir, write_key
from video2mp3.auth.passwords import Passwords
from video2mp3.auth.service import EMAIL_RE, MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, normalise_email
from video2mp3.auth.users import MAX_EMAIL_LENGTH, DatabaseUnavailable, EmailTaken, UserRepository
from video2mp3.core import tokens
from video2mp3.core.settings import load


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def keys_cmd(a, cfg: AuthConfig) -> int:
    keys_dir = Path(a.dir) if a.dir else cfg.keys_dir
    if keys_dir is None:
        print("give --dir DIR (or set AUTH_KEYS_DIR)", file=sys.stderr)
        return 2
    existing = load_dir(keys_dir) if keys_dir.is_dir() else []
    if a.action in ("new", "rotate"):
        if a.action == "new" and existing:
            print(f"{keys_dir} already holds {len(existing)} key(s); use `keys rotate` to add one",
                  file=sys.stderr)
            return 1
        key = generate()
        path = write_key(keys_dir, key)
        print(f"wrote {path} (kid {key.kid})")
        if existing:
            print(f"it signs from {_when(key.created + cfg.key_activate_after_s)} "
                  f"(KEY_ACTIVATE_AFTER_S={cfg.key_activate_after_s:g}); running auth services load it "
                  f"within KEYS_RELOAD_S={cfg.keys_reload_s:g} s. The key(s) it replaces stay published "
                  f"for TOKEN_TTL_SECONDS={cfg.token_ttl_seconds} after that; `keys prune` then deletes them.")
        return 0
    if not existing:
        print(f"no keys in {keys_dir}", file=sys.stderr)
        return 1
    ring = configured_ring(cfg, keys_dir)
    signing = ring.signing()
    published = {k.kid for k in ring.published()}
    for k in existing:
        state = ("signing" if k.kid == signing.kid else "published" if k.kid in published else "retired")
        if a.action == "list":
            print(f"{k.kid}  created {_when(k.created)}  {state}")
        elif a.action == "prune" and state == "retired":
            (keys_dir / f"{k.kid}.pem").unlink()
            print(f"deleted {keys_dir / (k.kid + '.pem')}")
    return 0


def _repo(cfg: AuthConfig) -> UserRepository:
    users = tables.repository(cfg.mysql)
    users.check()  # creates the schema if needed; raises DatabaseUnavailable
    return users


def _read_password(email: str) -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {email}: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("the passwords differ")
    return first


def users_cmd(a, cfg: AuthConfig) -> int:
    users = _repo(cfg)
    try:
        if a.action == "list":
            for u in users.all():
                print(f"{u.id}\t{u.email}\t{u.created_at:%Y-%m-%d %H:%M:%S}")
            return 0
        email = normalise_email(a.email)
        if a.action == "create":
            if len(email) > MAX_EMAIL_LENGTH or not EMAIL_RE.match(email):
                print(f"{email!r} is not a valid email address", file=sys.stderr)
                return 2
            password = _read_password(email)
            if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
                print(f"the password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters",
                      file=sys.stderr)
                return 2
            try:
                user = users.create(email, Passwords(1).hash(password))
            except EmailTaken:
                print(f"a user with email {email} already exists", file=sys.stderr)
                return 1
            print(f"created user {user.id} {user.email}")
            return 0
        # delete
        found = users.by_email(email)
        if found is None:
            print(f"no user with email {email}", file=sys.stderr)
            return 1
        if a.account_only:
            users.delete(found.id)
            print(f"deleted user {found.id} {email} (their files were kept)")
            return 0
        from video2mp3.auth.accounts import MediaData, delete_account

        key = configured_ring(cfg).signing()
        # A short-lived token of the user's own, so the Media service deletes exactly their data.
        token = tokens.issue(key.private_key, key.kid, str(found.id), found.email, 300)
        try:
            delete_account(users, MediaData(cfg.media.addr), found.id, token)
        except grpc.RpcError as e:
            print(f"the Media service at MEDIA_ADDR={cfg.media.addr} did not delete the files of {email} "
                  f"({e.code().name}: {e.details()}); the account is kept, try again "
                  "(or --account-only to keep their files)", file=sys.stderr)
            return 1
        print(f"deleted user {found.id} {email} and their jobs, videos and MP3s")
        return 0
    finally:
        users.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m video2mp3.auth", description="auth service admin commands")
    sub = p.add_subparsers(dest="group", required=True)
    k = sub.add_parser("keys", help="signing keys")
    k.add_argument("action", choices=["new", "rotate", "list", "prune"])
    k.add_argument("--dir", help="the keys directory (default $AUTH_KEYS_DIR)")
    u = sub.add_parser("users", help="user accounts")
    us = u.add_subparsers(dest="action", required=True)
    us.add_parser("list")
    us.add_parser("create").add_argument("email")
    d = us.add_parser("delete")
    d.add_argument("email")
    d.add_argument("--account-only", action="store_true", help="keep their files")
    a = p.parse_args(argv)
    cfg = load(AuthConfig)
    try:
        return keys_cmd(a, cfg) if a.group == "keys" else users_cmd(a, cfg)
    except DatabaseUnavailable as e:
        print(f"MySQL unavailable: {e}", file=sys.stderr)
        return 1
