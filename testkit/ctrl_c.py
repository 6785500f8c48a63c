"""Commands a test interrupts with SIGINT, as Ctrl-C in a terminal would.

A shell starts a background job (`make test &`, `nohup`) with SIGINT ignored,
every process under it inherits that, and a Python program that starts with
SIGINT ignored never raises KeyboardInterrupt: a Ctrl-C test run that way
would fail for a reason of the run's, not of the program's. So such a test
starts its command with SIGINT back at its default.
"""
from __future__ import annotations

import signal
import subprocess
from typing import Any


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen_interruptible(args: list[str], **kwargs: Any) -> subprocess.Popen:
    """subprocess.Popen(args, **kwargs), with SIGINT at its default in the child."""
    return subprocess.Popen(args, preexec_fn=_sigint_default, **kwargs)
