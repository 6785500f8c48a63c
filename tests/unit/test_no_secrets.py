"""Nothing secret in the repository."""
from __future__ import annotations

import re
import subprocess

import testkit

ROOT = testkit.ROOT


def test_no_signing_material_in_the_repository():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    pem = re.compile(rb"-----BEGIN [A-Z ]*(PRIVATE KEY|PUBLIC KEY|CERTIFICATE)-----")
    jwk_private = re.compile(rb'"kty"\s*:\s*"(OKP|EC|RSA|oct)"[^}]*"(d|k)"\s*:')
    secret_line = re.compile(rb"^\s*SECRET_KEY\s*[:=]\s*\S", re.M)
    found = []
    for name in files.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        for what, rx in (("PEM", pem), ("private JWK", jwk_private), ("SECRET_KEY value", secret_line)):
            if rx.search(data):
                found.append(f"{name}: {what}")
    assert found == []
