"""What happens to jobs when one of their tasks settles.

Whoever commits a task's result calls ``task_succeeded`` (or, after recording
a failure, ``task_failed``). Each subscribed job counts the task by
compare-and-swap; the one call whose swap completes a job's task set hands
the job to ``finish`` (the finalizer), so exactly one caller assembles it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from zpe_core.errors import ErrorSource, NotFound
from zpe_core.jobs.models import ErrorInfo, Job, JobState, Task, TaskState, now
from zpe_core.observability import metrics
from zpe_core.store.base import JobStore

log = logging.getLogger("zpe.service")


class TaskOutcomes:
    """Advances, fails and completes the jobs that wait for a task."""

    def __init__(self, store: JobStore, finish: Callable[[str], None]) -> None:
        self.store = store
        self._finish = finish

    def task_started(self, task: Task) -> None:
        """A worker leased ``task``: its queued jobs become running."""
        for job_id in task.subscribers:

            def change(job: Job) -> Job | None:
                if job.state is not JobState.QUEUED:
                    return None
                job.state = JobState.RUNNING
                job.started_at = now()
                return job

            try:
                self.store.mutate_job(job_id, change)
            except NotFound:
                continue

    def task_succeeded(self, task: Task) -> None:
        """Call after ``commit_result`` committed ``task``: advance and maybe finish its jobs."""
        metrics.observe_task_committed(task)
        for job_id in task.subscribers:
            self.mark_tasks_done(job_id, [task.task_id])

    def task_failed(self, task: Task) -> None:
        """Call after a failure was recorded: if the task failed for good, fail its jobs."""
        if task.state is TaskState.QUEUED:
            metrics.RETRIES.inc()
        if task.state is not TaskState.FAILED:
            return
        if task.dead_letter:
            metrics.DEAD_LETTERS.inc()
        error = task.error or ErrorInfo(
            code="task_failed", message="a task failed", source=ErrorSource.COMPUTE
        )
        for job_id in task.subscribers:
            self.fail_job(
                job_id,
                ErrorInfo(
                    code=error.code,
                    message=f"task {task.task_id[:13]} failed after {task.attempts} "
                    f"attempt(s): {error.message}",
                    source=error.source,
                    detail=error.detail,
                    retryable=error.retryable,
                ),
            )

    def fail_job(self, job_id: str, error: ErrorInfo) -> None:
        """End a job that has not ended yet as failed with ``error``."""

        def change(job: Job) -> Job | None:
            if job.state.terminal:
                return None
            job.state = JobState.FAILED
            job.error = error
            job.finished_at = now()
            return job

        try:
            self.store.mutate_job(job_id, change)
        except NotFound:
            return
        log.warning("job failed", extra={"job_id": job_id, "code": error.code})

    def mark_tasks_done(self, job_id: str, task_ids: list[str], *, reused: bool = False) -> None:
        """Count ``task_ids`` as done in one compare-and-swap; finish the job if that
        completed its set (``reused``: found done at submission, not computed for it)."""
        completed: list[bool] = []

        def change(job: Job) -> Job | None:
            completed.clear()  # a lost compare-and-swap retries this function
            new = [t for t in dict.fromkeys(task_ids) if t not in job.done_task_ids]
            if job.state.terminal or not new:
                return None
            job.done_task_ids.extend(new)
            if reused:
                job.reused_task_ids.extend(new)
            elif job.state is JobState.QUEUED:
                job.state = JobState.RUNNING
                job.started_at = now()
            if job.done_tasks == job.total_tasks:
                completed.append(True)
            return job

        try:
            self.store.mutate_job(job_id, change)
        except NotFound:
            return
        if completed:
            # This call's compare-and-swap completed the set: exactly one caller gets here.
            self._finish(job_id)
