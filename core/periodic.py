"""A daemon thread that calls a function every `interval` seconds until stopped:
the one loop behind the health monitor, the outbox and the janitor."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, name: str, interval: float, tick: Callable[[], object],
                 errors: tuple[type[BaseException], ...] = ()):
        """`errors`: exceptions a tick may raise that are logged, not fatal to the loop."""
        self.interval = interval
        self._tick = tick
        self._errors = errors
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> Periodic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._tick()
            except self._errors as e:
                log.warning("%s: %s", self._thread.name, e)
