"""The .proto contract: buf lint passes, every lint exception is needed, and
the generated stubs and descriptor set match the .proto files."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import testkit

ROOT = testkit.ROOT
BUF = ROOT / "node_modules" / ".bin" / "buf"
PROTOS = sorted(ROOT.glob("protos/**/*.proto"))
THIRD_PARTY = ROOT / "gen" / "third_party"
IGNORE = re.compile(r"^\s*//\s*buf:lint:ignore\s+(\S+)")


def buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    if not BUF.exists():
        pytest.fail(f"{BUF.relative_to(ROOT)} is missing: run `npm ci` (make test does)", pytrace=False)
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint_passes():
    r = buf("lint")
    assert r.returncode == 0, r.stdout + r.stderr


def test_buf_build_passes():
    r = buf("build", "-o", "/dev/null")
    assert r.returncode == 0, r.stdout + r.stderr


def _ignores() -> list[tuple[Path, int, str]]:
    found = []
    for path in PROTOS:
        for i, line in enumerate(path.read_text().splitlines()):
            m = IGNORE.match(line)
            if m:
                found.append((path, i, m.group(1)))
    return found


@pytest.mark.parametrize(
    ("path", "line", "rule"),
    [pytest.param(p, i, rule, id=f"{p.name}:{i + 1}:{rule}") for p, i, rule in _ignores()]
    or [pytest.param(None, None, None, marks=pytest.mark.skip(reason="no lint exceptions"))],
)
def test_every_lint_exception_is_needed(tmp_path, path, line, rule):
    """Dropping any one `buf:lint:ignore` comment makes buf lint fail on that
    rule: the exceptions are narrow and none is stale."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    shutil.copytree(THIRD_PARTY, tmp_path / "gen" / "third_party")
    copy = tmp_path / path.relative_to(ROOT)
    lines = copy.read_text().splitlines(keepends=True)
    del lines[line]
    copy.write_text("".join(lines))
    r = buf("lint", "--error-format=json", cwd=tmp_path)
    where = f"{path.relative_to(ROOT)}:{line + 1}"
    assert r.returncode != 0, f"`buf:lint:ignore {rule}` at {where} is not needed: remove it"
    rules = {json.loads(row)["type"] for row in r.stdout.splitlines() if row.strip()}
    assert rule in rules, f"without the comment at {where}, buf reports {rules}, not {rule}"


def test_generated_python_stubs_are_current(tmp_path):
    """Regenerate into a temp dir with the one recipe (tools/codegen.py) and compare."""
    r = subprocess.run([sys.executable, "tools/codegen.py", str(tmp_path / "gen")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "gen" / "python"
    fresh = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.py*") if p.is_file()}
    assert any(rel.name.endswith("_pb2.py") for rel in fresh), "codegen generated nothing"
    gen = ROOT / "gen" / "python"
    stale = [str(rel) for rel, data in fresh.items()
             if not (gen / rel).exists() or (gen / rel).read_bytes() != data]
    assert not stale, f"gen/python is out of date for {stale}: run `make protos`"


def test_descriptor_set_has_every_method_with_its_http_rule():
    """gen/descriptor.pb (what Envoy reads) holds every service and method of
    protos/, with the same google.api.http binding, plus google.rpc.Status."""
    from google.api import annotations_pb2  # noqa: F401 - parses the http options
    from google.protobuf import descriptor_pb2, descriptor_pool

    descriptor = ROOT / "gen" / "descriptor.pb"
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes())
    files = {f.name: f for f in fds.file}
    assert "google/rpc/status.proto" in files, "convert_grpc_status needs google.rpc.Status"

    # Parse the sources afresh and compare method by method.
    fresh = _fresh_descriptor_set()
    for src in fresh.file:
        if not src.name.startswith("video2mp3/"):
            continue
        assert src.name in files, f"{src.name} missing from gen/descriptor.pb: run `make protos`"
        built = files[src.name]
        for s_src, s_built in zip(src.service, built.service, strict=True):
            assert s_src.name == s_built.name
            for m_src, m_built in zip(s_src.method, s_built.method, strict=True):
                assert m_src.SerializeToString(deterministic=True) == \
                    m_built.SerializeToString(deterministic=True), (
                        f"{s_src.name}.{m_src.name} differs in gen/descriptor.pb: run `make protos`")

    # And the set as a whole loads (every import included), as Envoy loads it.
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    for name in ("video2mp3.auth.v1.AuthService", "video2mp3.media.v1.MediaService"):
        assert pool.FindServiceByName(name).methods


def _fresh_descriptor_set():
    import tempfile

    from google.protobuf import descriptor_pb2

    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, "tools/codegen.py", d],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return descriptor_pb2.FileDescriptorSet.FromString((Path(d) / "descriptor.pb").read_bytes())
