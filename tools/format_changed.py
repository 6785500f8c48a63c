"""`ruff format`, on the lines a commit changes only: the pre-commit hook `ruff-format`.

    python tools/format_changed.py FILE...

For each FILE, the lines that differ from HEAD (git diff -U0) are formatted
with `ruff format --range`, the last hunk first so that the earlier ones keep
their line numbers; a file HEAD does not have is formatted whole. Ruff
widens each range to the statements it touches.

Why not `ruff format FILE`: most of the code predates the formatter, and
formatting a whole file because one line changed would bury the change in a
diff of the file's layout (and collide with everyone else's edits). So the code
converges on ruff's format as it is edited. pre-commit runs this with the
unstaged changes stashed, so the working tree is what is being committed;
it fails the commit when it changed a file, to be added again.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUFF = ROOT / ".venv" / "bin" / "ruff"
HUNK = re.compile(r"^@@ -\S+ \+(\d+)(?:,(\d+))? @@", re.M)


def changed_lines(path: str) -> list[tuple[int, int]] | None:
    """(first, last) line of each changed hunk, 1-based; None: the whole file is new."""
    known = subprocess.run(["git", "cat-file", "-e", f"HEAD:{path}"], cwd=ROOT, capture_output=True)
    if known.returncode != 0:
        return None
    diff = subprocess.run(
        ["git", "diff", "-U0", "--no-color", "--no-ext-diff", "HEAD", "--", path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ranges = []
    for m in HUNK.finditer(diff):
        start, count = int(m.group(1)), int(m.group(2) or 1)
        if count:  # 0: lines were only deleted here
            ranges.append((start, start + count - 1))
    return ranges


def main(paths: list[str]) -> int:
    failed = 0
    for path in paths:
        ranges = changed_lines(path)
        base = [str(RUFF), "format", "--force-exclude", "--quiet"]
        if ranges is None:
            failed |= subprocess.run([*base, path], cwd=ROOT).returncode
            continue
        for first, last in reversed(ranges):
            # END is the start of line END: last + 1 takes line `last` whole.
            failed |= subprocess.run([*base, f"--range={first}-{last + 1}", path], cwd=ROOT).returncode
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
