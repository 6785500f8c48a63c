"""Job metrics the gateway reads from MongoDB every JOB_STATS_INTERVAL_S:
jobs by state, and the outbox's backlog and the age of its oldest job. Two
aggregate queries per round, on one thread; every gateway replica reports the
same numbers (dashboards take max(), not sum())."""
from __future__ import annotations

import logging

import pymongo.errors

from common import jobs, metrics
from common.periodic import Periodic

log = logging.getLogger(__name__)


class JobStats:
    def __init__(self, job_store: jobs.JobStore, interval_s: float):
        self.jobs = job_store
        self._loop = Periodic("job-stats", interval_s, self.collect, errors=(pymongo.errors.PyMongoError,))

    def start(self) -> JobStats:
        self._loop.start()
        return self

    def stop(self) -> None:
        self._loop.stop()

    def collect(self) -> None:
        counts = self.jobs.count_by_state()
        for state in jobs.State:
            metrics.JOBS.labels(state.value).set(counts.get(state.value, 0))
        backlog, oldest = self.jobs.unpublished_summary()
        metrics.OUTBOX_BACKLOG.set(backlog)
        if oldest is not None and oldest.tzinfo is None:  # pymongo returns naive UTC
            oldest = oldest.replace(tzinfo=jobs.now().tzinfo)
        metrics.OUTBOX_OLDEST_AGE.set((jobs.now() - oldest).total_seconds() if oldest else 0)
