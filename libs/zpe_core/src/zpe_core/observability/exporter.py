"""``GET /metrics``: the process's events plus the store's state, as Prometheus text.

Needs ``prometheus-client`` (the ``[metrics]`` extra of ``zpe-core``; the API asks
for it). The store's state, jobs by state and the ready-queue depth, is read by a
bounded scan (``metrics_scan_limit`` records, the listing included) that runs at
most once per ``metrics_cache_seconds`` and never twice at once, however often and
however many clients scrape: a scrape in between answers the last snapshot (its
age is exported), so scraping costs the store at most ``2 x metrics_scan_limit``
reads per interval. ``GET /metrics`` may also want a bearer token
(``ZPE_METRICS_TOKEN``, ``zpe_core.edge.tokens.check_metrics_token``).

No web framework here: ``render`` returns the text exposition format and the
API serves it at ``GET /metrics``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from zpe_client.models import JobState
from zpe_core.extras import missing_extra
from zpe_core.jobs.models import now
from zpe_core.observability.metrics import REGISTRY

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import Collector
except ImportError as exc:
    raise missing_extra("prometheus_client", "metrics", "GET /metrics") from exc

if TYPE_CHECKING:  # the store imports the metrics (to count its errors)
    from zpe_core.store.base import JobStore

__all__ = ["CONTENT_TYPE_LATEST", "MetricsExporter", "StoreCollector"]


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
        events: CollectorRegistry = REGISTRY  # set: prometheus-client is installed here
        return events.collect()


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
