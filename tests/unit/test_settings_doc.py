"""docs/configuration.md is what `make docs` writes from the settings classes,
and it says what every variable means."""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
import sys
import tomllib

import testkit
from tools import settings_doc

DOC = testkit.ROOT / "docs" / "configuration.md"


def declared() -> dict[str, list[dict]]:
    """Every variable of the classes the programs read: name -> its fields' metadata."""
    out: dict[str, list[dict]] = {}
    for section in settings_doc.sections():
        for f in dataclasses.fields(section.cls):
            if "env" in f.metadata:
                out.setdefault(f.metadata["env"], []).append(dict(f.metadata))
    return out


def test_configuration_doc_is_up_to_date():
    assert DOC.read_text(encoding="utf-8") == settings_doc.render(), (
        "docs/configuration.md is out of date: run `make docs` and commit it"
    )


def test_check_mode_tells_when_the_doc_is_stale(tmp_path):
    stale = tmp_path / "configuration.md"
    stale.write_text("# Configuration\n")
    script = str(testkit.ROOT / "tools" / "settings_doc.py")
    r = subprocess.run([sys.executable, script, "--check", str(stale)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "make docs" in r.stderr
    r = subprocess.run([sys.executable, script, "--check", str(DOC)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_variable_has_a_meaning_and_a_row():
    text = DOC.read_text(encoding="utf-8")
    variables = declared()
    assert len(variables) >= 79  # what the README's table listed before docs/ existed
    for name, metas in variables.items():
        for meta in metas:
            assert meta["help"].strip(), f"{name} has no help= in its settings class"
        rows = re.findall(rf"^\| `{name}` \| [^|]+ \| [^|]+ \| (.+) \|$", text, re.M)
        assert len(rows) == len(metas), f"{name}: {len(rows)} rows for {len(metas)} declarations"
        assert all(len(r) > 10 for r in rows), name


def test_every_settings_class_in_the_code_is_reached():
    """A new settings class must be nested in a program's class (or be a root in
    tools/settings_doc.PROGRAMS), else its variables would miss the document."""
    reached = {s.cls for s in settings_doc.sections()}
    folders = tomllib.loads((testkit.ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    folders["localmesh"] = "localmesh"
    modules = [
        f"{package}.{py.stem}"
        for package, folder in folders.items()
        if not folder.startswith("gen/")
        for py in sorted((testkit.ROOT / folder).glob("*.py"))
        if py.stem not in ("__init__", "__main__")
    ]
    assert len(modules) > 60
    for name in modules:
        for obj in vars(importlib.import_module(name)).values():
            if (
                isinstance(obj, type)
                and dataclasses.is_dataclass(obj)
                and obj.__module__ == name
                and any("env" in f.metadata for f in dataclasses.fields(obj))
            ):
                assert obj in reached, f"{name}.{obj.__name__} is read by no program in tools/settings_doc.py"


def test_a_machine_dependent_default_is_described_not_printed():
    for name in ("CONVERTER_WORKERS", "HASH_CONCURRENCY"):
        (meta,) = declared()[name]
        assert meta["shown_default"], name
