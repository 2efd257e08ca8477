"""The job metrics, read from the runner and its store at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from genserve.server.jobs.records import JobState
from genserve.server.jobs.runner import JobRunner


class JobMetrics(Collector):
    def __init__(self, runner: JobRunner) -> None:
        self._runner = runner

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        runner = self._runner
        by_state = GaugeMetricFamily(
            "genserve_jobs", "Jobs in the store by state.", labels=["state"]
        )
        counts = runner.store.counts()
        for state in JobState:
            by_state.add_metric([state.value], float(counts.get(state, 0)))
        queued = GaugeMetricFamily(
            "genserve_job_queue_depth", "Jobs waiting per model.", labels=["model"]
        )
        for model, depth in runner.queue_depths().items():
            queued.add_metric([model], float(depth))
        stored = GaugeMetricFamily(
            "genserve_job_store_bytes", "Artifact bytes kept by the job store."
        )
        stored.add_metric([], float(runner.store.stored_bytes()))
        expiries = CounterMetricFamily(
            "genserve_job_expiries", "Finished jobs whose artifact was deleted after its TTL."
        )
        expiries.add_metric([], float(runner.expiries))
        yield from (by_state, queued, stored, expiries)
