"""Cancelling jobs, and abandoning the tasks no job wants any more.

A task is shared by every job that wants the same computation, so cancelling
one job cancels a task only once no other active job waits for it.
"""

from __future__ import annotations

from collections.abc import Iterator

from zpe_client.models import JobState, TaskState
from zpe_core.errors import StateConflict
from zpe_core.jobs.models import Job, Task, now
from zpe_core.jobs.outcomes import with_done_tasks
from zpe_core.jobs.queries import JobQueries
from zpe_core.store.base import JobStore


class Cancellation:
    """Cancels jobs; abandons queued tasks whose every subscriber has ended."""

    def __init__(self, store: JobStore, queries: JobQueries) -> None:
        self.store = store
        self._queries = queries

    def cancel(self, job_id: str, *, owner: str | None = None) -> Job:
        """Cancel a job that has not finished; tasks nobody else wants are abandoned."""
        self._queries.get_job(job_id, owner=owner)  # NotFound unless the owner's

        def change(job: Job) -> Job | None:
            if job.state is JobState.CANCELLED:
                return None
            if job.state.terminal:
                raise StateConflict(
                    f"job {job_id} already ended ({job.state.value}); nothing to cancel",
                    code="job_already_finished",
                )
            job.state = JobState.CANCELLED
            job.finished_at = now()
            return with_done_tasks(self.store, job)

        job = self.store.mutate_job(job_id, change).value
        for task_id in {ref.task_id for ref in job.tasks}:
            self.abandon_if_unwanted(task_id)
        return job

    def abandon_if_unwanted(self, task_id: str) -> None:
        """Cancel a queued task if every job that wanted it has ended."""
        found = self.store.get_task(task_id)
        if found is None or found.value.state is not TaskState.QUEUED:
            return
        if self.has_active_subscriber(found.value):
            return

        def change(task: Task) -> Task | None:
            if task.state is not TaskState.QUEUED or self.has_active_subscriber(task):
                return None
            task.state = TaskState.CANCELLED
            return task

        self.store.mutate_task(task_id, change)

    def has_active_subscriber(self, task: Task) -> bool:
        """Whether any job waiting for ``task`` has not ended."""
        return any(True for _ in self._active_subscribers(task))

    def active_subscribers(self, task: Task) -> list[Job]:
        """The jobs waiting for ``task`` that have not ended, as read now."""
        return list(self._active_subscribers(task))

    def _active_subscribers(self, task: Task) -> Iterator[Job]:
        for job_id in task.subscribers:
            found = self.store.get_job(job_id)
            if found is not None and not found.value.state.terminal:
                yield found.value
