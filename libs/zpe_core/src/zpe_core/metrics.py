"""Prometheus metrics: every metric of the service, defined here and nowhere else.

Two kinds:

* **events** counted where they happen, in this process (``REGISTRY``): task
  durations (observed by ``JobService.task_succeeded``, i.e. wherever a result
  is committed: the API process for pull results and in-process thread
  workers; a push or process-pool worker counts in its own process), lease
  expiries, retries and dead letters (``JobService.reap`` / ``task_failed``),
  dispatch failures (``JobService._dispatch``) and store errors (every
  ``StoreUnavailable`` raised by a store primitive, by operation);
* **state** read from the store when scraped (``StoreCollector``): jobs by
  state and the ready-queue depth. The scan is bounded (``metrics_scan_limit``
  records) and cached (``metrics_cache_seconds``), so a scrape costs at most
  that many reads however large the store grows.

No web framework here: ``render`` returns the text exposition format and the
API serves it at ``GET /metrics``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from zpe_core.models import JobState, Task, now

if TYPE_CHECKING:  # the store imports this module (to count its errors)
    from zpe_core.store.base import JobStore

__all__ = ["CONTENT_TYPE_LATEST", "REGISTRY", "MetricsExporter", "StoreCollector"]

REGISTRY = CollectorRegistry(auto_describe=True)

TASK_DURATION = Histogram(
    "zpe_task_duration_seconds",
    "Wall time of committed task attempts (claim to commit), by engine.",
    ["engine"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
    registry=REGISTRY,
)
LEASE_EXPIRIES = Counter(
    "zpe_lease_expiries_total",
    "Task leases that expired without a heartbeat (each counts an attempt).",
    registry=REGISTRY,
)
RETRIES = Counter(
    "zpe_task_retries_total",
    "Task attempts that failed or expired and were re-queued with backoff.",
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "zpe_dead_letters_total",
    "Tasks that failed for good (moved to the dead-letter list).",
    registry=REGISTRY,
)
DISPATCH_FAILURES = Counter(
    "zpe_dispatch_failures_total",
    "Dispatch calls that failed after the dispatcher's own retries, by dispatcher.",
    ["dispatcher"],
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "zpe_store_errors_total",
    "StoreUnavailable raised by the job store, by primitive operation.",
    ["operation"],
    registry=REGISTRY,
)


# ---------------------------------------------------------------------- event hooks


def observe_task_committed(task: Task) -> None:
    """Observe the duration of the attempt that committed ``task``."""
    if not task.history:
        return
    attempt = task.history[-1]
    if attempt.ended_at is None:
        return
    TASK_DURATION.labels(engine=task.spec.engine).observe(
        max(0.0, attempt.ended_at - attempt.started_at)
    )


def count_store_error(operation: str) -> None:
    STORE_ERRORS.labels(operation=operation).inc()


def count_dispatch_failure(dispatcher: str) -> None:
    DISPATCH_FAILURES.labels(dispatcher=dispatcher).inc()


# ---------------------------------------------------------------------- store state


class StoreCollector(Collector):
    """Jobs by state and ready-queue depth, read from the store (bounded, cached)."""

    def __init__(self, store: JobStore, *, scan_limit: int, cache_seconds: float) -> None:
        self.store = store
        self.scan_limit = scan_limit
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: list[Metric] | None = None
        self._cached_at = 0.0

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            fresh = time.monotonic() - self._cached_at < self.cache_seconds
            if self._cached is None or not fresh:
                self._cached = self._scan()
                self._cached_at = time.monotonic()
            yield from self._cached

    def _scan(self) -> list[Metric]:
        counts = {state.value: 0 for state in JobState}
        job_ids = self.store.all_job_ids()
        truncated = len(job_ids) > self.scan_limit
        for job_id in job_ids[: self.scan_limit]:
            found = self.store.get_job(job_id)
            if found is not None:
                counts[found.value.state.value] += 1
        jobs = GaugeMetricFamily(
            "zpe_jobs",
            "Jobs in the store by state (at most metrics_scan_limit read).",
            labels=["state"],
        )
        for state, count in counts.items():
            jobs.add_metric([state], count)
        ready = self.store.queued_before(now(), limit=self.scan_limit)
        depth = GaugeMetricFamily(
            "zpe_queue_depth",
            "Queued tasks that are due now (ready for a worker).",
            value=len(ready),
        )
        if len(ready) >= self.scan_limit:
            truncated = True
        partial = GaugeMetricFamily(
            "zpe_metrics_scan_truncated",
            "1 if the last store scan stopped at metrics_scan_limit (gauges are lower bounds).",
            value=1 if truncated else 0,
        )
        return [jobs, depth, partial]


class _Proxy(Collector):
    """Puts the process-wide ``REGISTRY`` into another registry."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


class MetricsExporter:
    """The text exposition of the process-wide events plus one store's state."""

    def __init__(self, store: JobStore, *, scan_limit: int, cache_seconds: float) -> None:
        self.store = store
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Proxy())
        self.registry.register(
            StoreCollector(store, scan_limit=scan_limit, cache_seconds=cache_seconds)
        )

    def render(self) -> bytes:
        """Prometheus text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)
