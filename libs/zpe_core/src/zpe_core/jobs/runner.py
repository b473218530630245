"""Running one task: the code every worker runs, whatever dispatched the task.

``run_task`` claims a task through the store (so a duplicate delivery runs
nothing), keeps its lease alive with a heartbeat thread, computes it in a
private scratch directory, and commits the result or records the failure
under the lease's epoch (so a worker that lost its lease cannot overwrite a
newer attempt). ``compute_task`` (``zpe_core.jobs.compute``) is the store-free
part, shared with pull workers that talk to the store only through the API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum

from zpe_client.models import TaskSpec
from zpe_core.errors import EngineError, StateConflict, ZpeError
from zpe_core.jobs.compute import compute_task
from zpe_core.jobs.models import Task, error_info
from zpe_core.jobs.service import JobService
from zpe_core.observability.logs import bind, log_context
from zpe_core.store.base import JobStore

log = logging.getLogger("zpe.runner")


class Outcome(StrEnum):
    """What a delivery of a task ended in."""

    COMMITTED = "committed"  # this call computed and committed the result
    SKIPPED = "skipped"  # already done, or leased by someone else: nothing run
    ABANDONED = "abandoned"  # every job that wanted it ended: nothing run
    RETRY = "retry"  # failed, will be retried
    FAILED = "failed"  # failed for good (dead letter)
    LOST_LEASE = "lost_lease"  # computed, but the lease moved on: result refused


class StoreDensities:
    """Reference densities through the store (in-process and push workers)."""

    def __init__(self, store: JobStore, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes

    def fetch(self, spec: TaskSpec) -> bytes | None:
        if spec.reference_key is None:
            return None
        blob = self.store.get_reference_density(spec.reference_key)
        return blob if blob is not None and len(blob) <= self.max_bytes else None

    def publish(self, spec: TaskSpec, blob: bytes) -> None:
        if spec.reference_key is not None and len(blob) <= self.max_bytes:
            self.store.put_reference_density(spec.reference_key, blob)


class Heartbeat:
    """Extends a lease periodically from a daemon thread while a task runs."""

    def __init__(self, service: JobService, task: Task) -> None:
        self._service = service
        self._task_id = task.task_id
        assert task.lease is not None
        self._epoch = task.lease.epoch
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._loop, name="zpe-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        settings = self._service.settings
        while not self._stop.wait(settings.heartbeat_seconds):
            try:
                self._service.store.heartbeat(self._task_id, self._epoch, settings.lease_seconds)
            except StateConflict:
                self.lost = True
                return
            except ZpeError as exc:  # store briefly unavailable: keep trying
                log.warning("heartbeat failed", extra={"task_id": self._task_id, "error": str(exc)})


def run_task(
    service: JobService,
    task_id: str,
    worker_id: str,
    *,
    final_attempt: bool = False,
    ignore_ready_at: bool = False,
    on_claim: Callable[[Task], None] | None = None,
) -> Outcome:
    """Claim, compute and commit one task; advance its jobs.

    Push workers pass ``ignore_ready_at`` (the queue owns the schedule),
    ``final_attempt`` when the queue will not deliver again (a retryable
    failure is then recorded as final: dead letter, jobs failed) and
    ``on_claim`` to learn the lease (to release it on shutdown). Every log
    line inside carries ``task_id``, ``worker_id`` and (once claimed) the
    ``job_id`` of the task's first subscriber.
    """
    with log_context(task_id=task_id, worker_id=worker_id, job_id=None):
        return _run_task(
            service,
            task_id,
            worker_id,
            final_attempt=final_attempt,
            ignore_ready_at=ignore_ready_at,
            on_claim=on_claim,
        )


def _run_task(
    service: JobService,
    task_id: str,
    worker_id: str,
    *,
    final_attempt: bool,
    ignore_ready_at: bool,
    on_claim: Callable[[Task], None] | None,
) -> Outcome:
    store, settings = service.store, service.settings
    task = store.claim_task(
        task_id, worker_id, settings.lease_seconds, ignore_ready_at=ignore_ready_at
    )
    if task is None:
        return Outcome.SKIPPED
    if task.subscribers:
        bind(job_id=task.subscribers[0])
    assert task.lease is not None
    epoch = task.lease.epoch
    if on_claim is not None:
        on_claim(task)
    extra = {"task_id": task_id, "worker_id": worker_id, "epoch": epoch}
    jobs = service.active_subscribers(task)
    if not jobs:
        store.release_task(task_id, epoch)
        service.abandon_if_unwanted(task_id)
        log.info("task abandoned: no job wants it", extra=extra)
        return Outcome.ABANDONED
    service.task_started(task, jobs)
    started = time.monotonic()
    log.info("task started", extra=extra)
    try:
        densities = (
            StoreDensities(store, settings.warm_start_share_max_bytes)
            if settings.warm_start_share
            else None
        )
        with Heartbeat(service, task):
            result = compute_task(task.spec, settings, task_id=task_id, densities=densities)
    except EngineError as exc:
        log.warning("task failed", extra={**extra, "code": exc.code, "retryable": exc.retryable})
        error = error_info(exc)
        if exc.retryable and final_attempt:
            error.message += " (the last delivery attempt: not retried)"
        try:
            failed = store.fail_task(
                task_id,
                epoch,
                error,
                retryable=exc.retryable and not final_attempt,
                policy=settings.retry_policy,
            )
        except StateConflict:
            return Outcome.LOST_LEASE
        service.task_failed(failed)
        return Outcome.FAILED if failed.dead_letter else Outcome.RETRY
    result.worker_id = worker_id
    try:
        committed_task, committed = store.commit_result(task_id, epoch, result)
    except StateConflict:
        log.warning("result refused: lease lost", extra=extra)
        return Outcome.LOST_LEASE
    if committed:
        log.info(
            "task committed",
            extra={**extra, "seconds": round(time.monotonic() - started, 3)},
        )
        service.task_succeeded(committed_task, marked=True, jobs=jobs)
    return Outcome.COMMITTED
