"""Prometheus metrics: every metric of the service, defined here and nowhere else.

Two kinds:

* **events** counted where they happen, in this process (``REGISTRY``): task
  durations (observed by ``JobService.task_succeeded``, i.e. wherever a result
  is committed: the API process for pull results and in-process thread
  workers; a push or process-pool worker counts in its own process), lease
  expiries, retries and dead letters (``JobService.reap`` / ``task_failed``),
  dispatch failures (``JobService._dispatch``) and store errors (every
  ``StoreUnavailable`` raised by a store primitive, by operation);
* **state** read from the store (``StoreCollector``): jobs by state and the
  ready-queue depth. The scan is bounded (``metrics_scan_limit`` records, the
  listing included) and runs at most once per ``metrics_cache_seconds`` and
  never twice at once, however often and however many clients scrape: a
  scrape in between answers the last snapshot (its age is exported), so
  scraping costs the store at most ``2 x metrics_scan_limit`` reads per
  interval. ``GET /metrics`` may also want a bearer token (``ZPE_METRICS_TOKEN``,
  ``check_metrics_token``).

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

from zpe_core.edge.tokens import secret_matches
from zpe_core.errors import Unauthorized
from zpe_core.jobs.models import JobState, Task, now

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


def check_metrics_token(configured: str | None, presented: str | None) -> None:
    """With ``ZPE_METRICS_TOKEN`` set, refuse (401) a scrape without that bearer token."""
    if configured is None:
        return
    if not presented:
        raise Unauthorized(
            "GET /metrics wants 'Authorization: Bearer <ZPE_METRICS_TOKEN>'",
            code="metrics_token_required",
        )
    if not secret_matches(presented, configured):
        raise Unauthorized("the metrics token is not valid", code="invalid_metrics_token")


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
        # At most one scan at a time and one per ``cache_seconds``: while a scan runs,
        # other scrapes answer the previous snapshot instead of waiting or piling up.
        stale = time.monotonic() - self._cached_at >= self.cache_seconds
        if (self._cached is None or stale) and self._lock.acquire(blocking=self._cached is None):
            try:
                if self._cached is None or time.monotonic() - self._cached_at >= self.cache_seconds:
                    self._cached = self._scan()
                    self._cached_at = time.monotonic()
            finally:
                self._lock.release()
        assert self._cached is not None
        age = GaugeMetricFamily(
            "zpe_metrics_scan_age_seconds",
            "Age of the store scan behind zpe_jobs and zpe_queue_depth.",
            value=time.monotonic() - self._cached_at,
        )
        yield from [*self._cached, age]

    def _scan(self) -> list[Metric]:
        counts = {state.value: 0 for state in JobState}
        # A bounded listing (one more than the cap, to tell that there are more).
        job_ids = self.store.all_job_ids(limit=self.scan_limit + 1)
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
