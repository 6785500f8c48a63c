"""Process plumbing shared by the converter's supervisor and the local launcher."""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` to this process when its parent dies (even by
    SIGKILL), so no orphan keeps running with nobody to stop it. Safe to call
    between fork and exec (no allocation-heavy lookups); a no-op elsewhere."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), sig)
