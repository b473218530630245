"""``JobService``: the one object the API and the workers hold for jobs.

A thin facade over the modules that each own one concern, composed here:

* ``submission`` plans and submits jobs, subscribes them to tasks (idempotency);
* ``dispatching`` hands tasks to the dispatcher;
* ``queries`` reads jobs, results and files; ``cancellation`` cancels;
* ``outcomes`` reacts when a task settles (``task_succeeded`` / ``task_failed``);
* ``finalize`` assembles the Hessian and finishes a job whose tasks are all done;
* ``repair`` reaps expired leases and reconciles what crashes left half-done;
* ``zpe_core.jobs.engine_versions`` knows the engine versions of task keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from zpe_client.models import ErrorInfo, JobRequest
from zpe_core.dispatch.base import JobDispatcher
from zpe_core.jobs.cancellation import Cancellation
from zpe_core.jobs.dispatching import TaskDispatch
from zpe_core.jobs.engine_versions import EngineVersions
from zpe_core.jobs.finalize import DISPATCH_REQUESTS, Finalizer
from zpe_core.jobs.models import Job, Task
from zpe_core.jobs.outcomes import TaskOutcomes, done_task_ids
from zpe_core.jobs.queries import JobQueries
from zpe_core.jobs.repair import Repair
from zpe_core.jobs.submission import Submission
from zpe_core.jobs.targets import TargetAccess
from zpe_core.physics.plan import Plan
from zpe_core.settings import ServiceSettings
from zpe_core.store.base import JobStore

__all__ = ["DISPATCH_REQUESTS", "JobService"]


class JobService:
    """Submit, read, cancel, settle, finish and repair jobs on a ``JobStore``.

    ``dispatcher`` is None in a worker's service: it never dispatches (tasks it
    adds to a job are left as a dispatch request for the control plane).
    ``served_targets`` lists the targets registered compute servers serve (the
    control plane's registry); without it only ``ZPE_TARGETS`` exist.
    """

    def __init__(
        self,
        store: JobStore,
        dispatcher: JobDispatcher | None,
        settings: ServiceSettings,
        *,
        engine_versions: dict[str, str] | None = None,
        served_targets: Callable[[], set[str]] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.versions = EngineVersions(settings, engine_versions)
        self.outcomes = TaskOutcomes(store, finish=self.finalize)
        self.dispatching = TaskDispatch(store, dispatcher, settings, self.outcomes)
        self.submission = Submission(
            store,
            settings,
            self.versions,
            self.dispatching,
            self.outcomes,
            TargetAccess(settings, served_targets),
        )
        self.finalizer = Finalizer(
            store, settings, self.outcomes, self.submission, self.dispatching
        )
        self.queries = JobQueries(store)
        self.cancellation = Cancellation(store, self.queries)
        self.repair = Repair(
            store,
            settings,
            self.submission,
            self.outcomes,
            self.finalizer,
            self.dispatching,
            self.cancellation,
        )

    @property
    def dispatcher(self) -> JobDispatcher | None:
        return self.dispatching.dispatcher

    # submission
    def engine_version(self, engine: str) -> str:
        return self.versions.of(engine)

    def plan(self, request: JobRequest, *, scope: str | None = None) -> tuple[str, Plan]:
        return self.submission.plan(request, scope=scope)

    def submit(
        self, request: JobRequest, *, owner: str, idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        return self.submission.submit(request, owner=owner, idempotency_key=idempotency_key)

    def dispatch(self, tasks: Sequence[Task]) -> None:
        self.dispatching.dispatch(tasks)

    # reads and cancel
    def get_job(self, job_id: str, *, owner: str | None = None) -> tuple[Job, int]:
        return self.queries.get_job(job_id, owner=owner)

    def get_result(self, job_id: str, *, owner: str | None = None) -> dict[str, object]:
        return self.queries.get_result(job_id, owner=owner)

    def get_file(self, job_id: str, kind: str, *, owner: str | None = None) -> bytes:
        return self.queries.get_file(job_id, kind, owner=owner)

    def search_jobs(
        self,
        owner: str,
        query: str,
        *,
        cursor: str | None = None,
        limit: int = 20,
        scan_max: int = 1000,
    ) -> tuple[list[Job], str | None]:
        return self.queries.search_jobs(owner, query, cursor=cursor, limit=limit, scan_max=scan_max)

    def task_states(self, job: Job) -> dict[str, int]:
        return self.queries.task_states(job)

    def cancel(self, job_id: str, *, owner: str | None = None) -> Job:
        return self.cancellation.cancel(job_id, owner=owner)

    def abandon_if_unwanted(self, task_id: str) -> None:
        self.cancellation.abandon_if_unwanted(task_id)

    def has_active_subscriber(self, task: Task) -> bool:
        return self.cancellation.has_active_subscriber(task)

    def active_subscribers(self, task: Task) -> list[Job]:
        return self.cancellation.active_subscribers(task)

    # task outcomes and finishing
    def done_task_ids(self, job: Job) -> list[str]:
        """The job's done tasks (while it runs: its done markers, not its record)."""
        return done_task_ids(self.store, job)

    def task_started(self, task: Task, jobs: list[Job] | None = None) -> None:
        self.outcomes.task_started(task, jobs)

    def task_succeeded(
        self, task: Task, *, marked: bool = False, jobs: list[Job] | None = None
    ) -> None:
        self.outcomes.task_succeeded(task, marked=marked, jobs=jobs)

    def task_failed(self, task: Task) -> None:
        self.outcomes.task_failed(task)

    def fail_job(self, job_id: str, error: ErrorInfo) -> None:
        self.outcomes.fail_job(job_id, error)

    def finalize(self, job_id: str) -> None:
        self.finalizer.finalize(job_id)

    # repair
    def dispatch_requested(self) -> int:
        return self.repair.dispatch_requested()

    def reap(self) -> int:
        return self.repair.reap()

    def recover(self) -> int:
        return self.repair.recover()

    def reconcile(self, stale_after: float, *, every_job: bool = False) -> int:
        return self.repair.reconcile(stale_after, every_job=every_job)

    def redispatch_lost(self, at: float | None = None) -> int:
        return self.repair.redispatch_lost(at)

    def prune_reference_densities(self) -> int:
        return self.repair.prune_reference_densities()
