"""One log format for every service: time, service, level, logger, message."""
import logging
import os


def setup_logging(service: str) -> None:
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
    # pika logs every reconnect attempt at WARNING with a traceback; our own
    # code logs one line per outage instead.
    logging.getLogger("pika").setLevel(max(logging.getLevelName(level), logging.ERROR))
