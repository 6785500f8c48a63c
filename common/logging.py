"""One log format for every service: time, service, level, logger, message."""
import dataclasses
import logging
from typing import Literal

from common.settings import load, setting


@dataclasses.dataclass(frozen=True)
class LogSettings:
    level: Literal["CRITICAL", "FATAL", "ERROR", "WARN", "WARNING", "INFO", "DEBUG", "NOTSET"] = \
        setting("LOG_LEVEL", "INFO")


def setup_logging(service: str) -> None:
    level = load(LogSettings).level
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
    # pika logs every reconnect attempt at WARNING with a traceback; our own
    # code logs one line per outage instead.
    logging.getLogger("pika").setLevel(max(logging.getLevelName(level), logging.ERROR))
