"""What happens to jobs when one of their tasks settles.

Whoever commits a task's result calls ``task_succeeded`` (or, after recording
a failure, ``task_failed``). A task's outcome for each subscribed job is a
create-only marker of its own (``store.mark_tasks_done``), never a write of the
job's record: progress is counted from the markers (``done_task_ids``) and the
write that ends a job copies them onto its record (``with_done_tasks``). The
caller that sees a job's set complete and wins its create-only election
(``store.claim_finalizer``) hands the job to ``finish`` (the finalizer); a
finisher that crashed after its election is replaced by the reconcile.

A job's record is so written O(1) times whatever its size: created, started
(the first task leased or committed), reused tasks listed (once per
submission), done, failed or cancelled (and grown once, when a symmetry check
fails).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection

from zpe_client.models import ErrorInfo, ErrorSource, JobState, TaskState
from zpe_core.errors import NotFound, StoreUnavailable
from zpe_core.jobs.models import Job, Task, now
from zpe_core.observability import metrics
from zpe_core.store.base import JobStore

log = logging.getLogger("zpe.service")


def done_task_ids(store: JobStore, job: Job) -> list[str]:
    """The job's done tasks: those on its record once it ended, else its done markers
    (with those on the record, for records written before markers existed)."""
    if job.state.terminal:
        return list(job.done_task_ids)
    return _marked_done(store, job)


def _marked_done(store: JobStore, job: Job) -> list[str]:
    return list(dict.fromkeys([*job.done_task_ids, *store.done_task_ids(job.job_id)]))


def count_done(store: JobStore, job_id: str, on_record: Collection[str] = ()) -> int:
    """How many tasks of a running job are done, ``len(done_task_ids)``; ``on_record``:
    the done ids its record lists. The markers are counted, not listed, unless the
    record lists some too (written before markers existed)."""
    if not on_record:
        return store.count_done_tasks(job_id)
    return len(set(on_record).union(store.done_task_ids(job_id)))


def is_complete(store: JobStore, job: Job) -> bool:
    """Whether every task of the job is done."""
    return not {ref.task_id for ref in job.tasks} - set(done_task_ids(store, job))


def with_done_tasks(store: JobStore, job: Job) -> Job:
    """``job`` with its done tasks written down, for the write that ends it."""
    job.done_task_ids = _marked_done(store, job)
    return job


class TaskOutcomes:
    """Advances, fails and completes the jobs that wait for a task."""

    def __init__(self, store: JobStore, finish: Callable[[str], None]) -> None:
        self.store = store
        self._finish = finish
        # Jobs whose start (queued -> running) a thread of this process is writing.
        self._starting: set[str] = set()
        self._starting_lock = threading.Lock()

    def task_started(self, task: Task, jobs: list[Job] | None = None) -> None:
        """A worker leased ``task``: its queued jobs become running.

        ``jobs``: the subscribed jobs as the caller just read them; those seen running
        (a job never goes back to queued) are not read again.
        """
        seen = {job.job_id: job for job in jobs or []}
        for job_id in task.subscribers:
            job = seen.get(job_id)
            if job is None or job.state is JobState.QUEUED:
                self._start_job(job_id)

    def _start_job(self, job_id: str) -> None:
        """Queued -> running: one write of the job's record, best effort.

        Every worker that leases one of a job's first tasks gets here at once, and they
        would all contend on the record (Cloud Storage answers 429 past about one write a
        second): so one thread of this process at a time tries, and a start that could
        not be written is written by a later task or by the write that ends the job.
        """
        with self._starting_lock:
            if job_id in self._starting:
                return
            self._starting.add(job_id)

        def change(job: Job) -> Job | None:
            if job.state is not JobState.QUEUED:
                return None
            job.state = JobState.RUNNING
            job.started_at = now()
            return job

        try:
            self.store.mutate_job(job_id, change)
        except NotFound:
            pass
        except StoreUnavailable as exc:
            log.warning("job start not recorded", extra={"job_id": job_id, "error": str(exc)})
        finally:
            with self._starting_lock:
                self._starting.discard(job_id)

    def task_succeeded(
        self, task: Task, *, marked: bool = False, jobs: list[Job] | None = None
    ) -> None:
        """Call after ``commit_result`` committed ``task``: advance and maybe finish its jobs.

        ``marked``: the commit already marked it done for its jobs (``commit_result``
        answered ``committed``), so only completion is checked. ``jobs``: subscribed jobs
        as the worker read them when it claimed the task, not read again (a job that
        ended or grew since is no harm: completion is counted from the markers, the
        election is per job size, and ``finish`` reads the job afresh).
        """
        metrics.observe_task_committed(task)
        seen = {job.job_id: job for job in jobs or []}
        for job_id in task.subscribers:
            self.mark_tasks_done(job_id, [task.task_id], marked=marked, seen=seen.get(job_id))

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
            return with_done_tasks(self.store, job)

        try:
            self.store.mutate_job(job_id, change)
        except NotFound:
            return
        log.warning("job failed", extra={"job_id": job_id, "code": error.code})

    def mark_tasks_done(
        self,
        job_id: str,
        task_ids: list[str],
        *,
        reused: bool = False,
        marked: bool = False,
        seen: Job | None = None,
    ) -> None:
        """Record tasks of a job as done on markers of their own (the job's record is not
        written per task) and finish the job if that completed its set and this caller
        wins the election (``reused``: found done at submission, not computed for it:
        listed on the record, in one write per submission; ``marked``: their markers
        are written already, by the commit; ``seen``: the job as read a moment ago)."""
        if seen is None:
            found = self.store.get_job(job_id)
            if found is None:
                return
            seen = found.value
        if seen.state.terminal:
            return
        job = seen
        wanted = [t for t in task_ids if t in {ref.task_id for ref in job.tasks}]
        if not marked:
            wanted = self.store.mark_tasks_done(job_id, wanted, reused=reused)

        def list_reused(current: Job) -> Job | None:
            new = [t for t in wanted if t not in current.reused_task_ids]
            if current.state.terminal or not new:
                return None
            current.reused_task_ids.extend(new)
            return current

        if reused and set(wanted) - set(job.reused_task_ids):
            try:
                job = self.store.mutate_job(job_id, list_reused).value
            except NotFound:
                return
        elif not reused and job.state is JobState.QUEUED:
            self._start_job(job_id)
        if job.state.terminal or not is_complete(self.store, job):
            return
        if self.store.claim_finalizer(job_id, job.total_tasks):
            # Exactly one caller per job and size gets here (a crash after: reconcile).
            self._finish(job_id)
