"""web/tus.min.js (the page's resumable-upload client) is tus-js-client's own
browser bundle, exactly the version package-lock.json pins (`make web`)."""
from __future__ import annotations

import json
import re

import testkit

ROOT = testkit.ROOT


def test_the_committed_bundle_is_the_locked_tus_js_client():
    lock = json.loads((ROOT / "package-lock.json").read_text())
    locked = lock["packages"]["node_modules/tus-js-client"]["version"]
    declared = json.loads((ROOT / "package.json").read_text())["devDependencies"]["tus-js-client"]
    assert declared == locked, "package.json pins the exact version"
    installed = json.loads((ROOT / "node_modules/tus-js-client/package.json").read_text())["version"]
    assert installed == locked
    dist = (ROOT / "node_modules/tus-js-client/dist/tus.min.js").read_text()
    bundle = (ROOT / "web/tus.min.js").read_text()
    assert bundle == re.sub(r"//# sourceMappingURL=\S*$", "", dist, flags=re.M), "run `make web`"
    # Served under the page's CSP: no eval, nothing fetched from elsewhere.
    assert "eval(" not in bundle
    assert "sourceMappingURL" not in bundle
