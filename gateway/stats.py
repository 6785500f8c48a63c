"""Job metrics the gateway reads from MongoDB every JOB_STATS_INTERVAL_S
(gateway/__main__.py runs collect() on a core/periodic.Periodic): jobs by
state, and the outbox's backlog and the age of its oldest job. Two aggregate
queries per round, on one thread; every gateway replica reports the same
numbers (dashboards take max(), not sum())."""
from __future__ import annotations

from video2mp3.domain import jobs
from video2mp3.telemetry import metrics


def collect(job_store: jobs.JobStore) -> None:
    # Both queries first, then every gauge: a scrape in between sees one round.
    counts = job_store.count_by_state()
    backlog, oldest = job_store.unpublished_summary()
    for state in jobs.State:
        metrics.JOBS.labels(state.value).set(counts.get(state.value, 0))
    metrics.OUTBOX_BACKLOG.set(backlog)
    if oldest is not None and oldest.tzinfo is None:  # pymongo returns naive UTC
        oldest = oldest.replace(tzinfo=jobs.now().tzinfo)
    metrics.OUTBOX_OLDEST_AGE.set((jobs.now() - oldest).total_seconds() if oldest else 0)
