"""Handing tasks to the dispatcher, and what a refused dispatch does to their jobs.

A dispatch that fails after the dispatcher's own retries fails its tasks for
good (not retryable: nothing would deliver the retry) and so their jobs, with
the dispatcher's reason. The time of each dispatch is remembered so that
``reconcile`` re-dispatches only tasks that have waited too long.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from zpe_core.dispatch.base import JobDispatcher
from zpe_core.errors import DispatchError
from zpe_core.jobs.models import Task, error_info, now
from zpe_core.jobs.outcomes import TaskOutcomes
from zpe_core.observability import metrics
from zpe_core.settings import ServiceSettings
from zpe_core.store.base import JobStore

log = logging.getLogger("zpe.service")


class TaskDispatch:
    """Dispatches tasks through an optional dispatcher (none: a worker's service)."""

    def __init__(
        self,
        store: JobStore,
        dispatcher: JobDispatcher | None,
        settings: ServiceSettings,
        outcomes: TaskOutcomes,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.settings = settings
        self._outcomes = outcomes
        # When this process last dispatched each task, so reconcile() re-dispatches
        # only tasks that have waited too long (lost dispatches), not a healthy backlog.
        self.last_dispatch: dict[str, float] = {}

    def dispatch(self, tasks: Sequence[Task]) -> None:
        """Dispatch ``tasks``; if the dispatcher refuses, fail them and their jobs."""
        if self.dispatcher is None:
            return
        dispatched_at = now()
        for task in tasks:
            self.last_dispatch[task.task_id] = dispatched_at
        try:
            self.dispatcher.dispatch(tasks)
        except DispatchError as exc:
            log.error("dispatch failed", extra={"error": exc.message})
            metrics.count_dispatch_failure(self.dispatcher.name)
            for task in tasks:
                failed = self.store.fail_task(
                    task.task_id,
                    None,
                    error_info(exc),
                    retryable=False,
                    policy=self.settings.retry_policy,
                )
                self._outcomes.task_failed(failed)

    def forget_settled(self, still_queued: set[str], since: float) -> None:
        """Drop the dispatch times of tasks no longer queued (keep those after ``since``)."""
        self.last_dispatch = {
            task_id: at
            for task_id, at in self.last_dispatch.items()
            if task_id in still_queued or at >= since
        }
