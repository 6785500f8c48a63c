"""The outbox re-publisher: jobs are recorded before they are published, so a
job whose publish failed (RabbitMQ down, no confirm) is still in MongoDB with
published=false. This thread publishes those once RabbitMQ is back."""
from __future__ import annotations

import datetime as dt
import logging

import pymongo.errors

from video2mp3.core.periodic import Periodic
from video2mp3.domain import jobs
from video2mp3.telemetry import metrics

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, job_store: jobs.JobStore, publish, interval_s: float):
        self.jobs = job_store
        self.publish = publish  # Uploads.publish: returns True once confirmed
        self.interval_s = interval_s
        self._loop = Periodic("outbox", interval_s, self.flush, errors=(pymongo.errors.PyMongoError,))

    def start(self) -> Outbox:
        self._loop.start()
        return self

    def stop(self) -> None:
        self._loop.stop()

    def flush(self) -> int:
        """Publishes what is pending; returns how many were published."""
        # Skip jobs younger than one interval: their upload RPC may still be publishing.
        cutoff = jobs.now() - dt.timedelta(seconds=self.interval_s)
        published = 0
        for job in self.jobs.unpublished(older_than=cutoff):
            if not self.publish(job):
                break  # RabbitMQ still down; try again next round
            published += 1
            metrics.OUTBOX_REPUBLISHED.inc()
        if published:
            log.info("outbox published %d pending job(s)", published)
        return published
