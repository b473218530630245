"""Submitting a job: validate and plan it, bind its idempotency key, create it,
and create its tasks or subscribe it to existing ones (a done task is reused at
once, a failed or abandoned one revived), then dispatch what must run.

Every step is idempotent, so a submission cut by a store outage or a crash is
finished by its retry (same ``Idempotency-Key``) or by ``reconcile``.
"""

from __future__ import annotations

import logging

from zpe_client.models import JobRequest, TaskSpec, TaskState
from zpe_core.errors import AlreadyExists, StateConflict, StoreUnavailable
from zpe_core.jobs import transitions
from zpe_core.jobs.dispatching import TaskDispatch
from zpe_core.jobs.engine_versions import EngineVersions
from zpe_core.jobs.models import DEFAULT_TARGET, Job, Task, now
from zpe_core.jobs.outcomes import TaskOutcomes
from zpe_core.jobs.targets import TargetAccess
from zpe_core.physics.analysis import displacements
from zpe_core.physics.plan import (
    Plan,
    PlannedTask,
    build_plan,
    check_plan_cost,
    is_reference,
    new_job_id,
    owner_scope,
    request_fingerprint,
    task_key,
)
from zpe_core.physics.preview import resolve_engine
from zpe_core.physics.qe_input import parse_qe_input, select_mobile
from zpe_core.physics.symmetry import select_points
from zpe_core.settings import ServiceSettings
from zpe_core.store.base import JobStore

log = logging.getLogger("zpe.service")


class Submission:
    """Turns requests into jobs and their tasks."""

    def __init__(
        self,
        store: JobStore,
        settings: ServiceSettings,
        versions: EngineVersions,
        dispatch: TaskDispatch,
        outcomes: TaskOutcomes,
        targets: TargetAccess,
    ) -> None:
        self.store = store
        self.settings = settings
        self.versions = versions
        self.targets = targets
        self._dispatch = dispatch
        self._outcomes = outcomes

    def reuse_scope(self, owner: str) -> str | None:
        """The scope in which ``owner``'s jobs share tasks (None: with every owner)."""
        return None if self.settings.reuse_across_owners else owner_scope(owner)

    def plan(self, request: JobRequest, *, scope: str | None = None) -> tuple[str, Plan]:
        """Validate a request and build its plan, its tasks in reuse ``scope`` (no store)."""
        engine = resolve_engine(request.engine, self.settings)
        parsed = parse_qe_input(
            request.input_text,
            max_bytes=self.settings.max_input_bytes,
            limits=self.settings.input_limits,
        )
        mobile = select_mobile(parsed, request.mobile, max_mobile=self.settings.max_mobile_atoms)
        check_plan_cost(
            len(parsed.atoms),
            len(displacements(mobile, request.nfree)),
            self.settings.max_plan_positions,
        )
        plan = build_plan(
            parsed,
            mobile,
            request,
            engine=engine,
            engine_version=self.versions.of(engine),
            pseudo_dir=self.settings.pseudo_dir if engine == "qe" else None,
            reuse_scope=scope,
        )
        return engine, plan

    def submit(
        self, request: JobRequest, *, owner: str, idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """Create a job and dispatch its tasks. Returns ``(job, created)``.

        With an ``idempotency_key``, a repeat of the same payload returns the
        first job (``created=False``); the same key with another payload is a
        ``StateConflict``. Invalid input raises ``InputError`` and stores nothing.
        """
        scope = self.reuse_scope(owner)
        engine, plan = self.plan(request, scope=scope)
        self.targets.check(owner, request.target or DEFAULT_TARGET)
        computed, symmetry = select_points(plan, request.symmetry)
        fingerprint = request_fingerprint(request)
        job_id = new_job_id()
        adopted = False
        if idempotency_key is not None:
            existing = self.store.claim_idempotency_key(owner, idempotency_key, fingerprint, job_id)
            if existing is not None:
                existing_id, existing_fp = existing
                if existing_fp != fingerprint:
                    raise StateConflict(
                        "this Idempotency-Key was already used with a different payload",
                        code="idempotency_key_reused",
                    )
                found = self.store.get_job(existing_id)
                if found is not None:
                    if not found.value.state.terminal:
                        # The first request may have been cut (store outage, crash) after
                        # creating the job but before creating all its tasks: finish it.
                        self.attach(found.value, self.plan_in_scope(found.value, plan), repair=True)
                    return found.value, False
                # The first request bound the key but was cut before creating its job:
                # create it under the bound id (create never overwrites, so a first
                # request still running and this one end with one job).
                job_id, adopted = existing_id, True
        job = Job(
            job_id=job_id,
            owner=owner,
            request=request,
            engine=engine,
            structure=plan.structure,
            tasks=computed,
            symmetry=symmetry,
            fingerprint=fingerprint,
            idempotency_key=idempotency_key,
            reuse_scope=scope,
        )
        try:
            self.store.create_job(job)
        except AlreadyExists:
            if not adopted:
                raise
            # The first request created it meanwhile: finish and answer it like a repeat.
            raced = self.store.get_job(job_id)
            assert raced is not None
            self.attach(raced.value, self.plan_in_scope(raced.value, plan), repair=True)
            return raced.value, False
        except StoreUnavailable:
            # Keep the key bound: the write may have happened with its answer lost, and a
            # retry with the key adopts the bound id either way (never two jobs).
            raise
        except BaseException:
            if idempotency_key is not None:
                self.store.release_idempotency_key(owner, idempotency_key)
            raise
        log.info("job submitted", extra={"job_id": job_id, "tasks": job.total_tasks})
        self.attach(job, plan)
        found = self.store.get_job(job_id)
        assert found is not None
        return found.value, True

    def plan_in_scope(self, job: Job, plan: Plan) -> Plan:
        """``plan``, or the job's own if it was created under another reuse scope."""
        if plan.tasks and plan.tasks[0].spec.reuse_scope == job.reuse_scope:
            return plan
        return self.plan(job.request, scope=job.reuse_scope)[1]

    def attach(self, job: Job, plan: Plan, *, repair: bool = False) -> None:
        """Create or subscribe to the job's tasks, count reused ones, dispatch the rest.

        Idempotent. ``repair``: a cut submission is being finished, so queued tasks also
        get their ready marker again (the cut may have fallen between a task and its
        marker, and workers find tasks through markers). Only the plan's tasks that the
        job computes are attached (with symmetry, a subset: ``job.tasks``).
        """
        target = job.request.target or DEFAULT_TARGET
        to_dispatch: list[Task] = []
        reused: list[str] = []
        wanted = {ref.task_id for ref in job.tasks}
        attached = list(
            {p.task_id: p for p in plan.tasks if p.task_id in wanted}.values()
        )  # each wanted task once, in plan order
        # New tasks are created together (two round trips); known ones are subscribed to.
        created = self.store.create_tasks([_new_task(p, job.job_id, target) for p in attached])
        for planned, made in zip(attached, created, strict=True):
            if made is not None:
                task, needs_dispatch = made.value, True
            else:
                task, needs_dispatch = self._subscribe(planned, job.job_id, target)
            if task.state is TaskState.DONE:
                reused.append(task.task_id)
            elif needs_dispatch:
                if repair and task.state is TaskState.QUEUED:
                    self.store.mark_ready(task)
                to_dispatch.append(task)
        if reused:
            # One compare-and-swap for every reused task (a resubmitted job: one write).
            self._outcomes.mark_tasks_done(job.job_id, reused, reused=True)
        if to_dispatch:
            self._dispatch.dispatch(to_dispatch)

    def _subscribe(self, planned: PlannedTask, job_id: str, target: str) -> tuple[Task, bool]:
        """Add the job to the existing task. Returns ``(task, dispatch?)``."""
        found = self.store.get_task(planned.task_id)
        if (
            found is not None
            and found.value.state is TaskState.DONE
            and same_computation(found.value.spec, planned.spec)
        ):
            # Reused as it is: a done task never changes again and no job waits for it,
            # so resubmitting writes nothing per task (and subscriber lists stay short).
            return found.value, False
        revived: list[bool] = []

        def change(task: Task) -> Task | None:
            revived.clear()  # a lost compare-and-swap retries this function
            foreign = not same_computation(task.spec, planned.spec)
            if target not in task.targets and task.state is TaskState.QUEUED:
                revived.append(True)  # it now waits in this target's lane too: mark it there
            if (
                not foreign
                and job_id in task.subscribers
                and target in task.targets
                and task.state not in (TaskState.FAILED, TaskState.CANCELLED)
            ):
                return None
            if foreign:
                # The stored spec would give pw.x another input than this job's own (a
                # record written by other code, or tampered with): never inherit it. Take
                # the planned spec and compute afresh; a worker holding the old one loses
                # its lease.
                log.error(
                    "stored task spec differs from the planned one: replaced",
                    extra={"task_id": task.task_id, "job_id": job_id},
                )
                task.spec = planned.spec.model_copy(deep=True)
                task.result = None
                task.lease = None
                if task.state is not TaskState.QUEUED:
                    task.state = TaskState.FAILED  # revived just below
            if target not in task.targets:
                task.targets.append(target)
            if job_id not in task.subscribers:
                task.subscribers.append(job_id)
            # A new job wants a point that failed or was abandoned before: try afresh.
            if transitions.requeue(task) is not None:
                revived.append(True)
            return task

        task = self.store.mutate_task(planned.task_id, change).value
        if revived:
            self.store.mark_ready(task)
        # Queued or leased tasks are already dispatched; re-dispatching is harmless
        # and covers a dispatch lost before a crash.
        return task, task.state is TaskState.QUEUED


def _new_task(planned: PlannedTask, job_id: str, target: str) -> Task:
    """The queued task of ``planned``, wanted by ``job_id`` in ``target``."""
    return Task(
        task_id=planned.task_id,
        spec=planned.spec,
        subscribers=[job_id],
        targets=[target],
        # Due now, not at 0: ready markers sort by this time, and a marker at 0 would put
        # every new task ahead of retries forever (starvation). The reference a
        # millisecond earlier: leased first, it can warm-start the displaced points on
        # every worker (issue 14).
        ready_at=now() - (0.001 if is_reference(planned.spec) else 0.0),
    )


def same_computation(stored: TaskSpec, planned: TaskSpec) -> bool:
    """Whether a stored spec gives the engine what the planned one would: their key
    material (everything that reaches pw.x, see ``task_key``) is the same."""
    return task_key(stored) == task_key(planned)
