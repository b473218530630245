"""Prometheus metrics: every metric of the service, defined here and nowhere else.

Two kinds:

* **events** counted where they happen, in this process (``REGISTRY``): task
  durations (observed by ``task_succeeded``, i.e. wherever a result is
  committed: the API process for pull results and in-process thread workers;
  a push or process-pool worker counts in its own process), lease expiries,
  retries and dead letters (``reap`` / ``task_failed``), dispatch failures
  (``TaskDispatch.dispatch``) and store errors (every ``StoreUnavailable``
  raised by a store primitive, by operation);
* **state** read from the store (``zpe_core.observability.exporter``: jobs by
  state and the ready-queue depth, for ``GET /metrics``).

Without ``prometheus-client`` (``zpe-core`` without its ``[metrics]`` extra, as a
pull worker installs it) the event hooks count nothing and ``REGISTRY`` is None.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from zpe_core.jobs.models import Task

__all__ = ["ENABLED", "REGISTRY"]


def _prometheus_client() -> ModuleType | None:
    try:
        return importlib.import_module("prometheus_client")
    except ImportError:
        return None


_PROMETHEUS = _prometheus_client()
#: Whether metrics are counted (prometheus-client is installed).
ENABLED = _PROMETHEUS is not None


class _NoMetric:
    """Stands in for a metric when prometheus-client is absent: counts nothing."""

    def labels(self, **labels: str) -> _NoMetric:
        return self

    def inc(self, amount: float = 1) -> None:
        return None

    def observe(self, amount: float) -> None:
        return None


#: The process-wide registry of event metrics (None without prometheus-client).
REGISTRY: Any = _PROMETHEUS.CollectorRegistry(auto_describe=True) if _PROMETHEUS else None


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
    if _PROMETHEUS is None:
        return _NoMetric()
    return _PROMETHEUS.Counter(name, doc, list(labels), registry=REGISTRY)


def _histogram(name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Any:
    if _PROMETHEUS is None:
        return _NoMetric()
    return _PROMETHEUS.Histogram(name, doc, list(labels), buckets=buckets, registry=REGISTRY)


TASK_DURATION = _histogram(
    "zpe_task_duration_seconds",
    "Wall time of committed task attempts (claim to commit), by engine.",
    ("engine",),
    (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
LEASE_EXPIRIES = _counter(
    "zpe_lease_expiries_total",
    "Task leases that expired without a heartbeat (each counts an attempt).",
)
RETRIES = _counter(
    "zpe_task_retries_total",
    "Task attempts that failed or expired and were re-queued with backoff.",
)
DEAD_LETTERS = _counter(
    "zpe_dead_letters_total",
    "Tasks that failed for good (moved to the dead-letter list).",
)
DISPATCH_FAILURES = _counter(
    "zpe_dispatch_failures_total",
    "Dispatch calls that failed after the dispatcher's own retries, by dispatcher.",
    ("dispatcher",),
)
STORE_ERRORS = _counter(
    "zpe_store_errors_total",
    "StoreUnavailable raised by the job store, by primitive operation.",
    ("operation",),
)
PULL_LEASE_REQUESTS = _counter(
    "zpe_pull_lease_requests_total",
    "Pull workers' lease requests answered with at least one task, by route "
    "(lease: one task per request; leases: batched).",
    ("route",),
)
PULL_TASKS_LEASED = _counter(
    "zpe_pull_tasks_leased_total",
    "Tasks leased to pull workers, by route (lease or leases).",
    ("route",),
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


def count_pull_leases(route: str, tasks: int) -> None:
    """One lease request of ``route`` that granted ``tasks`` (> 0) tasks."""
    PULL_LEASE_REQUESTS.labels(route=route).inc()
    PULL_TASKS_LEASED.labels(route=route).inc(tasks)


def count_store_error(operation: str) -> None:
    STORE_ERRORS.labels(operation=operation).inc()


def count_dispatch_failure(dispatcher: str) -> None:
    DISPATCH_FAILURES.labels(dispatcher=dispatcher).inc()
