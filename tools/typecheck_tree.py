"""Lay the installed package out as symlinks, for mypy: `python tools/typecheck_tree.py OUT`.

The project installs its folders under one name (pyproject.toml's
[tool.setuptools.package-dir]: auth/ is `video2mp3.auth`, gen/python/.../auth/v1
is `video2mp3.auth.v1`, ...). Python's import system follows that mapping in an
editable install; mypy cannot, so `make lint` points it at OUT/video2mp3, a tree
of symlinks with the installed layout. Editing through it edits the real files.

It also checks that mypy sees every Python file of the checkout: each is in an
installed folder or under one of [tool.mypy] files (the folders that run from
the checkout), so a new top-level folder cannot go unchecked unnoticed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(out: Path) -> None:
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    if out.exists():
        shutil.rmtree(out)
    for package in sorted(mapping, key=lambda p: p.count(".")):
        source = ROOT / mapping[package]
        target = out.joinpath(*package.split("."))
        target.parent.mkdir(parents=True, exist_ok=True)
        nested = any(other.startswith(package + ".") for other in mapping)
        if not nested:  # the whole folder is the package
            target.symlink_to(os.path.relpath(source, target.parent), target_is_directory=True)
            continue
        # A package with a mapped subpackage (auth/ holding the generated auth/v1):
        # a real folder whose entries link to the source's.
        target.mkdir(exist_ok=True)
        for entry in source.iterdir():
            if entry.name != "__pycache__":
                (target / entry.name).symlink_to(os.path.relpath(entry, target))


def unchecked() -> list[str]:
    """Python files (tracked or new, not ignored) neither installed nor in mypy's files."""
    config = _pyproject()["tool"]
    roots = [*config["setuptools"]["package-dir"].values(), *config["mypy"]["files"]]
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [
        f for f in listed if (ROOT / f).exists() and not any(f == r or f.startswith(r.rstrip("/") + "/") for r in roots)
    ]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


if __name__ == "__main__":
    build(Path(sys.argv[1]).resolve())
    if missed := unchecked():
        sys.exit("not type-checked: add their folder to pyproject.toml's [tool.mypy] files: " + ", ".join(missed))
