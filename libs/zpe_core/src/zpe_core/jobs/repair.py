"""Repair: what leases that expired, crashes and store outages leave half-done.

``reap`` (every few seconds) re-queues expired leases and dispatches the tasks
workers added to jobs; ``reconcile`` (every ``ZPE_RECONCILE_INTERVAL_SECONDS``,
over the active-job index) counts uncounted results, fails jobs of failed tasks,
finishes complete jobs, re-creates the tasks of cut submissions, restores the
lease and ready markers a cut write left out and re-dispatches tasks whose
dispatch was lost (queued longer than ``ZPE_REDISPATCH_AFTER_SECONDS``);
``recover`` is a reconcile of every job at start-up; ``redispatch_lost``
re-dispatches tasks whose queued delivery vanished (Cloud Tasks). Every step is
idempotent.
"""

from __future__ import annotations

import functools
import logging

from zpe_client.models import ErrorInfo, ErrorSource, TaskState
from zpe_core.errors import StoreUnavailable, ZpeError
from zpe_core.jobs import transitions
from zpe_core.jobs.cancellation import Cancellation
from zpe_core.jobs.dispatching import TaskDispatch
from zpe_core.jobs.finalize import DISPATCH_REQUESTS, Finalizer
from zpe_core.jobs.models import DispatchRequest, Job, Task, error_info, now
from zpe_core.jobs.outcomes import TaskOutcomes, done_task_ids, is_complete
from zpe_core.jobs.submission import Submission
from zpe_core.observability import metrics
from zpe_core.settings import ServiceSettings
from zpe_core.store.base import JobStore

log = logging.getLogger("zpe.service")

# An active-job index entry without a job is removed only this long after it was
# written: the submission that wrote it may still be about to create the job.
_ORPHAN_AFTER_SECONDS = 600.0


class Repair:
    """Periodic and start-up repair of jobs and tasks."""

    def __init__(
        self,
        store: JobStore,
        settings: ServiceSettings,
        submission: Submission,
        outcomes: TaskOutcomes,
        finalizer: Finalizer,
        dispatch: TaskDispatch,
        cancellation: Cancellation,
    ) -> None:
        self.store = store
        self.settings = settings
        self._submission = submission
        self._outcomes = outcomes
        self._finalizer = finalizer
        self._dispatch = dispatch
        self._cancellation = cancellation

    def dispatch_requested(self) -> int:
        """Dispatch the tasks that dispatcher-less services (workers) added to jobs."""
        if self._dispatch.dispatcher is None:
            return 0
        count = 0
        for key in self.store.list_documents(DISPATCH_REQUESTS):
            found = self.store.get_document(key, DispatchRequest)
            if found is not None:
                tasks = [self.store.get_task(task_id) for task_id in found.value.task_ids]
                queued = [
                    t.value for t in tasks if t is not None and t.value.state is TaskState.QUEUED
                ]
                if queued:
                    self._dispatch.dispatch(queued)
                    count += len(queued)
            self.store.delete_document(key)
        return count

    def reap(self) -> int:
        """Re-queue expired leases (re-dispatching them) and fail exhausted tasks; dispatch
        the tasks workers added to jobs (``dispatch_requested``)."""
        self.dispatch_requested()
        changed = self.store.expire_leases(self.settings.retry_policy)
        requeued = [task for task in changed if task.state is TaskState.QUEUED]
        metrics.LEASE_EXPIRIES.inc(len(changed))
        metrics.RETRIES.inc(len(requeued))
        for task in changed:
            if task.state is TaskState.FAILED:
                self._outcomes.task_failed(task)
        if requeued:
            self._dispatch.dispatch(requeued)
        return len(changed)

    def recover(self) -> int:
        """After a restart: re-dispatch every queued task and settle every active job,
        looking at every job (so the active-job index is rebuilt for stores older than it)."""
        return self.reconcile(stale_after=0.0, every_job=True)

    def reconcile(self, stale_after: float, *, every_job: bool = False) -> int:
        """Repair what a crash or a store outage left half-done; returns tasks re-dispatched.

        For every job of the active-job index (``every_job``: every job in the store):
        count tasks that finished but were not counted, fail the job of a task that
        failed, finish a job whose tasks are all done, restore the lease marker of a
        leased task whose lease expired and the ready marker of a due queued task (a
        write cut between two keys), and re-dispatch queued tasks that have waited for
        a worker more than ``stale_after`` seconds since they were last dispatched (a
        dispatch lost to a crash or an outage; duplicates are harmless since workers
        claim through the store). Ended jobs leave the index here.
        """
        t = now()
        pending: dict[str, Task] = {}
        queued: set[str] = set()
        job_ids = self.store.all_job_ids() if every_job else self.store.active_job_ids()
        for job_id in job_ids:
            found_job = self.store.get_job(job_id)
            if found_job is None:
                since = self.store.active_job_since(job_id)
                if since is not None and t - since > _ORPHAN_AFTER_SECONDS:
                    self.store.forget_active_job(job_id)  # its submission never created it
                continue
            job = found_job.value
            if job.state.terminal:
                self.store.forget_active_job(job_id)
                continue
            if every_job:
                self.store.track_active_job(job_id, job.created_at)
            for task_id in {ref.task_id for ref in job.tasks} - set(done_task_ids(self.store, job)):
                found = self.store.get_task(task_id)
                if found is None:
                    # Its submission was cut before creating every task: create them now.
                    self._repair_tasks(job)
                    found = self.store.get_task(task_id)
                    if found is None:
                        continue
                task = found.value
                if task.state is TaskState.DONE:
                    self._outcomes.mark_tasks_done(job_id, [task_id])
                elif task.state is TaskState.FAILED:
                    self._outcomes.task_failed(task)
                elif task.state is TaskState.LEASED and task.lease is not None:
                    if task.lease.expires_at < t:
                        # A claim cut between its write and its marker: let the reaper see it.
                        self.store.track_lease(task_id)
                elif task.state is TaskState.QUEUED and task_id not in pending:
                    queued.add(task_id)
                    if task.ready_at <= t:
                        # Create-only, so a no-op unless a re-queue was cut before it.
                        self.store.mark_ready(task)
                    last = max(task.ready_at, self._dispatch.last_dispatch.get(task_id, 0.0))
                    if t - last >= stale_after:
                        pending[task_id] = task
            refreshed = self.store.get_job(job_id)
            if (
                refreshed is not None
                and not refreshed.value.state.terminal
                and is_complete(self.store, refreshed.value)
            ):
                self._finalizer.finalize(job_id)  # whoever was elected (it may have crashed)
        self._dispatch.forget_settled(queued, since=t)
        if pending:
            self._dispatch.dispatch(list(pending.values()))
        return len(pending)

    def prune_reference_densities(self) -> int:
        """Delete shipped reference densities (warm starts on other workers) stored more
        than ``warm_start_share_ttl_seconds`` ago; returns how many."""
        cutoff = now() - self.settings.warm_start_share_ttl_seconds
        return self.store.prune_reference_densities(cutoff)

    def _repair_tasks(self, job: Job) -> None:
        """Create the tasks of a job whose submission was cut by an outage or a crash."""
        try:
            _, plan = self._submission.plan(job.request, scope=job.reuse_scope)
        except StoreUnavailable:
            raise  # an outage is not the job's fault: the next reconcile tries again
        except ZpeError as exc:
            self._outcomes.fail_job(job.job_id, error_info(exc))
            return
        if not {ref.task_id for ref in job.tasks} <= {ref.task_id for ref in plan.refs}:
            # The engine version moved since (task keys include it): cannot rebuild.
            self._outcomes.fail_job(
                job.job_id,
                ErrorInfo(
                    code="tasks_missing",
                    message="the job's submission was interrupted and its tasks cannot be "
                    "rebuilt (the engine version changed); submit it again",
                    source=ErrorSource.INTERNAL,
                ),
            )
            return
        log.warning("re-creating the tasks of a cut submission", extra={"job_id": job.job_id})
        self._submission.attach(job, plan, repair=True)

    def redispatch_lost(self, at: float | None = None) -> int:
        """Re-dispatch queued tasks whose queued delivery is gone; returns how many.

        Only for a dispatcher that ``tracks_deliveries`` (Cloud Tasks); else 0.

        A task is a candidate when it has been due, and unchanged, for
        ``redispatch_after_seconds`` (before the time ``at``, default now).
        If the queue still holds a Cloud Task for it, it is only waiting (a backlog)
        and is left alone. Otherwise its delivery was lost: that counts an attempt
        (so the new dispatch has a new name, and a task nobody can ever deliver ends
        as a dead letter with the reason instead of waiting forever).
        """
        dispatcher = self._dispatch.dispatcher
        if dispatcher is None or not dispatcher.tracks_deliveries:
            return 0
        store, policy = self.store, self.settings.retry_policy
        deadline = (now() if at is None else at) - self.settings.redispatch_after_seconds
        stale: list[Task] = []
        for task in store.queued_before(deadline):
            if task.updated_at >= deadline:
                continue  # queued, subscribed or dispatched again recently
            if self._cancellation.has_active_subscriber(task):
                stale.append(task)
            else:
                self._cancellation.abandon_if_unwanted(task.task_id)
        if not stale:
            return 0
        present = dispatcher.enqueued_task_ids()
        waited = self.settings.redispatch_after_seconds
        redispatch: list[Task] = []
        for seen in stale:
            if seen.task_id in present:
                continue

            error = ErrorInfo(
                code="delivery_lost",
                message=f"no worker ran the task within {waited:.0f} s of it being due "
                "and the queue no longer holds it (check the worker URL, its "
                "authentication and the queue)",
                source=ErrorSource.DISPATCH,
                retryable=True,
            )
            change = functools.partial(transitions.redeliver, seen=seen, error=error, policy=policy)
            lost = store.mutate_task(seen.task_id, change)
            if not lost.wrote:
                continue  # a worker or another reconciler moved it meanwhile
            task = lost.value
            log.warning(
                "task delivery lost", extra={"task_id": task.task_id, "state": task.state.value}
            )
            if task.state is TaskState.QUEUED:
                store.mark_ready(task)
                redispatch.append(task)
            else:
                self._outcomes.task_failed(task)
        if redispatch:
            # A DispatchError here fails the jobs with the reason.
            self._dispatch.dispatch(redispatch)
        return len(redispatch)
