"""Job orchestration shared by the control plane and the workers.

``JobService`` turns a request into a job and its tasks, dispatches the
tasks, and reacts when a task settles: whoever commits a task's result calls
``task_succeeded`` (or ``task_failed``), which advances every job waiting for
that task; the one caller whose compare-and-swap completes a job's task set
assembles the Hessian and finishes the job (``finalize``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence

import numpy as np
from ase import Atoms

from zpe_core.control.compute_servers import ComputeRegistry
from zpe_core.dispatch.base import DispatchError, JobDispatcher
from zpe_core.engines.base import MOCK_VERSION
from zpe_core.errors import (
    AlreadyExists,
    ConfigurationError,
    ErrorSource,
    InputError,
    NotFound,
    StateConflict,
    StoreUnavailable,
    ZpeError,
)
from zpe_core.jobs import transitions
from zpe_core.jobs.models import (
    DEFAULT_TARGET,
    DerivedPoint,
    DispatchRequest,
    ErrorInfo,
    Job,
    JobRequest,
    JobState,
    JobSummary,
    Task,
    TaskRef,
    TaskSpec,
    TaskState,
    error_info,
    hill_formula,
    now,
)
from zpe_core.observability import metrics
from zpe_core.physics.analysis import Displacement, analyze, displaced_positions, displacements
from zpe_core.physics.artifacts import ARTIFACT_NAMES, build_artifacts
from zpe_core.physics.plan import (
    Plan,
    PlannedTask,
    build_plan,
    check_plan_cost,
    is_reference,
    new_job_id,
    owner_scope,
    request_fingerprint,
    scoped_task_id,
    task_key,
)
from zpe_core.physics.qe_input import parse_qe_input, select_mobile
from zpe_core.physics.symmetry import broken_by_reference, rebuild_job_forces, select_points
from zpe_core.settings import Settings
from zpe_core.store.base import JobStore

log = logging.getLogger("zpe.service")


class JobService:
    """Submit, cancel and finish jobs on top of a ``JobStore`` and a ``JobDispatcher``."""

    def __init__(
        self,
        store: JobStore,
        dispatcher: JobDispatcher | None,
        settings: Settings,
        *,
        engine_versions: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.settings = settings
        self._engine_versions = engine_versions or {}
        # When this process last dispatched each task, so reconcile() re-dispatches
        # only tasks that have waited too long (lost dispatches), not a healthy backlog.
        self._last_dispatch: dict[str, float] = {}

    # ------------------------------------------------------------------ submission

    def engine_version(self, engine: str) -> str:
        """The version that goes into task keys for ``engine``."""
        if engine not in self._engine_versions:
            if engine == "mock":
                self._engine_versions[engine] = MOCK_VERSION
            elif engine == "qe" and self.settings.qe_version:
                self._engine_versions[engine] = self.settings.qe_version
            elif self.settings.execution_mode != "inprocess":
                # The control plane of a split deployment never runs (or imports) an engine.
                raise ConfigurationError(
                    f"set ZPE_QE_VERSION (e.g. qe-7.2, what the workers' pw.x reports) to "
                    f"offer the {engine!r} engine in {self.settings.execution_mode} mode",
                    code="engine_version_unset",
                )
            else:
                from zpe_core.engines import get_engine

                self._engine_versions[engine] = get_engine(engine, self.settings).version()
        return self._engine_versions[engine]

    def reuse_scope(self, owner: str) -> str | None:
        """The scope in which ``owner``'s jobs share tasks (None: with every owner)."""
        return None if self.settings.reuse_across_owners else owner_scope(owner)

    def plan(self, request: JobRequest, *, scope: str | None = None) -> tuple[str, Plan]:
        """Validate a request and build its plan, its tasks in reuse ``scope`` (no store)."""
        engine = request.engine or self.settings.default_engine
        if engine not in self.settings.engines:
            raise InputError(
                f"engine {engine!r} is not offered here; choose one of {self.settings.engines}",
                code="unknown_engine",
            )
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
            engine_version=self.engine_version(engine),
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
        ComputeRegistry(self.store, self.settings).check_target(
            owner, request.target or DEFAULT_TARGET
        )
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
                        self._attach(
                            found.value, self._plan_in_scope(found.value, plan), repair=True
                        )
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
            self._attach(raced.value, self._plan_in_scope(raced.value, plan), repair=True)
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
        self._attach(job, plan)
        found = self.store.get_job(job_id)
        assert found is not None
        return found.value, True

    def _plan_in_scope(self, job: Job, plan: Plan) -> Plan:
        """``plan``, or the job's own if it was created under another reuse scope."""
        if plan.tasks and plan.tasks[0].spec.reuse_scope == job.reuse_scope:
            return plan
        return self.plan(job.request, scope=job.reuse_scope)[1]

    def _attach(self, job: Job, plan: Plan, *, repair: bool = False) -> None:
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
        seen: set[str] = set()
        for planned in plan.tasks:
            if planned.task_id in seen or planned.task_id not in wanted:
                continue
            seen.add(planned.task_id)
            task, needs_dispatch = self._subscribe(planned, job.job_id, target)
            if task.state is TaskState.DONE:
                reused.append(task.task_id)
            elif needs_dispatch:
                if repair and task.state is TaskState.QUEUED:
                    self.store.mark_ready(task)
                to_dispatch.append(task)
        if reused:
            # One compare-and-swap for every reused task (a resubmitted job: one write).
            self._mark_tasks_done(job.job_id, reused, reused=True)
        if to_dispatch:
            self._dispatch(to_dispatch)

    def _subscribe(self, planned: PlannedTask, job_id: str, target: str) -> tuple[Task, bool]:
        """Create the task, or add the job to an existing one. Returns ``(task, dispatch?)``."""
        try:
            created = self.store.create_task(
                Task(
                    task_id=planned.task_id,
                    spec=planned.spec,
                    subscribers=[job_id],
                    targets=[target],
                    # Due now, not at 0: ready markers sort by this time, and a marker at
                    # 0 would put every new task ahead of retries forever (starvation).
                    # The reference a millisecond earlier: leased first, it can warm-start
                    # the displaced points on every worker (issue 14).
                    ready_at=now() - (0.001 if is_reference(planned.spec) else 0.0),
                )
            )
            return created.value, True
        except AlreadyExists:
            pass
        found = self.store.get_task(planned.task_id)
        if (
            found is not None
            and found.value.state is TaskState.DONE
            and _same_computation(found.value.spec, planned.spec)
        ):
            # Reused as it is: a done task never changes again and no job waits for it,
            # so resubmitting writes nothing per task (and subscriber lists stay short).
            return found.value, False
        revived: list[bool] = []

        def change(task: Task) -> Task | None:
            revived.clear()  # a lost compare-and-swap retries this function
            foreign = not _same_computation(task.spec, planned.spec)
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

    def _dispatch(self, tasks: Sequence[Task]) -> None:
        if self.dispatcher is None:
            return
        dispatched_at = now()
        for task in tasks:
            self._last_dispatch[task.task_id] = dispatched_at
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
                self.task_failed(failed)

    # ------------------------------------------------------------------ reading

    def get_job(self, job_id: str, *, owner: str | None = None) -> tuple[Job, int]:
        """The job and its store revision; ``NotFound`` if absent or not the owner's."""
        found = self.store.get_job(job_id)
        if found is None or (owner is not None and found.value.owner != owner):
            raise NotFound(f"job {job_id} not found")
        return found.value, found.rev

    def get_result(self, job_id: str, *, owner: str | None = None) -> dict[str, object]:
        job, _ = self.get_job(job_id, owner=owner)
        self._require_done(job)
        raw = self.store.get_artifact(job_id, ARTIFACT_NAMES["result"])
        if raw is None:
            raise NotFound(f"result of job {job_id} is missing from the store")
        result: dict[str, object] = json.loads(raw)
        return result

    def get_file(self, job_id: str, kind: str, *, owner: str | None = None) -> bytes:
        """An artifact of a done job, or (``kind="input"``, in any state) its pw.x input."""
        if kind not in ARTIFACT_NAMES and kind != "input":
            raise InputError(
                f"unknown file kind {kind!r}; choose one of {sorted([*ARTIFACT_NAMES, 'input'])}",
                code="unknown_file_kind",
            )
        job, _ = self.get_job(job_id, owner=owner)
        if kind == "input":
            return job.request.input_text.encode()
        self._require_done(job)
        raw = self.store.get_artifact(job_id, ARTIFACT_NAMES[kind])
        if raw is None:
            raise NotFound(f"{kind} of job {job_id} is missing from the store")
        return raw

    def search_jobs(
        self,
        owner: str,
        query: str,
        *,
        cursor: str | None = None,
        limit: int = 20,
        scan_max: int = 1000,
    ) -> tuple[list[Job], str | None]:
        """The owner's jobs whose label, formula or id contains ``query`` (any case).

        Newest first, like ``list_jobs``; reads at most ``scan_max`` jobs per call and
        answers a cursor to go on from where it stopped, so a rare match costs pages,
        never an unbounded scan.
        """
        needle = query.casefold()
        found: list[Job] = []
        scanned = 0
        while len(found) < limit and scanned < scan_max:
            page, cursor = self.store.list_jobs(
                owner, cursor=cursor, limit=min(limit - len(found), scan_max - scanned)
            )
            scanned += len(page)
            found += [job for job in page if needle in _search_text(job)]
            if cursor is None:
                break
        return found, cursor

    @staticmethod
    def _require_done(job: Job) -> None:
        if job.state is not JobState.DONE:
            reason = f": {job.error.message}" if job.error else ""
            raise StateConflict(
                f"job {job.job_id} is {job.state.value}, not done{reason}", code="job_not_done"
            )

    def task_states(self, job: Job) -> dict[str, int]:
        """How many of the job's tasks are in each state (reads every task)."""
        counts: dict[str, int] = {}
        for task_id in {ref.task_id for ref in job.tasks}:
            found = self.store.get_task(task_id)
            state = found.value.state.value if found else "missing"
            counts[state] = counts.get(state, 0) + 1
        return counts

    # ------------------------------------------------------------------ cancel

    def cancel(self, job_id: str, *, owner: str | None = None) -> Job:
        """Cancel a job that has not finished; tasks nobody else wants are abandoned."""
        self.get_job(job_id, owner=owner)

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
            return job

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
        for job_id in task.subscribers:
            found = self.store.get_job(job_id)
            if found is not None and not found.value.state.terminal:
                return True
        return False

    # ------------------------------------------------------------------ task outcomes

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
            self._mark_task_done(job_id, task.task_id)

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

    def _mark_task_done(self, job_id: str, task_id: str, *, reused: bool = False) -> None:
        self._mark_tasks_done(job_id, [task_id], reused=reused)

    def _mark_tasks_done(self, job_id: str, task_ids: list[str], *, reused: bool = False) -> None:
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
            self.finalize(job_id)

    # ------------------------------------------------------------------ finishing

    def finalize(self, job_id: str) -> None:
        """Assemble the Hessian from the tasks' forces and finish the job.

        Idempotent: a crash half-way is repaired by running it again (recovery).
        """
        found = self.store.get_job(job_id)
        if found is None or found.value.state.terminal:
            return
        job = found.value
        try:
            forces: dict[str, np.ndarray] = {}
            engine_version = ""
            potential_energy = 0.0
            for ref in job.tasks:
                task = self.store.get_task(ref.task_id)
                if task is None or task.value.result is None:
                    raise ZpeError(f"task {ref.task_id} has no result", code="missing_result")
                forces[ref.name] = np.asarray(task.value.result.forces_ev_per_a, dtype=float)
                engine_version = task.value.result.engine_version
                if ref.name == "eq":  # the reference SCF: the potential energy
                    potential_energy = task.value.result.energy_ev
            if job.symmetry is not None and job.symmetry.derived:
                broken = broken_by_reference(
                    job.symmetry, forces["eq"], job.structure.mobile_indices
                )
                if broken is not None:
                    self._compute_every_point(job, broken)
                    return
                forces = rebuild_job_forces(forces, job.symmetry)
            atoms = _atoms_with_input_masses(job, self.settings)
            vib = analyze(
                atoms,
                job.structure.mobile_indices,
                job.request.delta,
                job.request.nfree,
                forces,
                job.request.temperature,
                job.structure.free_molecule,
                frequency_set=job.request.frequency_set,
            )
            finished = now()
            _, files = build_artifacts(
                job,
                atoms,
                vib,
                potential_energy_ev=potential_energy,
                finished_at=finished,
                engine_version=engine_version,
            )
            for name, data in files.items():
                self.store.put_artifact(job_id, name, data)
        except ZpeError as exc:
            self.fail_job(job_id, error_info(exc))
            return
        except Exception as exc:  # never leave a job running forever on a bug
            log.exception("finalize failed", extra={"job_id": job_id})
            self.fail_job(
                job_id,
                ErrorInfo(
                    code="analysis_failed",
                    message=f"could not build the frequencies: {exc}",
                    source=ErrorSource.COMPUTE,
                ),
            )
            return

        summary = JobSummary(
            zpe_ev=float(vib.zpe_ev),
            s_vib_jmol_k=float(vib.s_vib_jmol_k),
            n_imaginary=vib.n_imaginary,  # not counting rigid-body modes of a molecule
        )

        def change(job: Job) -> Job | None:
            if job.state.terminal:
                return None
            job.state = JobState.DONE
            job.summary = summary
            job.finished_at = finished
            if job.started_at is None:
                job.started_at = job.created_at
            return job

        self.store.mutate_job(job_id, change)
        log.info("job done", extra={"job_id": job_id, "zpe_ev": vib.zpe_ev})

    def _compute_every_point(self, job: Job, reason: str) -> None:
        """Turn a symmetry-reduced job into a full one: add the points it meant to rebuild.

        The job's record grows by its derived points (one compare-and-swap, with the
        reason); their tasks are created from the reference task's spec, so no
        re-planning (and no engine version) is needed where this runs. A service
        without a dispatcher (a worker) leaves a dispatch request for the control plane.
        """
        log.warning(
            "symmetry check failed; computing every point",
            extra={"job_id": job.job_id, "reason": reason},
        )

        def change(current: Job) -> Job | None:
            sym = current.symmetry
            if current.state.terminal or sym is None or not sym.derived:
                return None
            known = {ref.task_id for ref in current.tasks}
            current.tasks.extend(
                TaskRef(name=d.name, task_id=d.task_id)
                for d in sym.derived
                if d.task_id not in known
            )
            sym.derived = []
            sym.reason = reason
            return current

        derived = job.symmetry.derived if job.symmetry is not None else []
        reference = self.store.get_task(job.tasks[0].task_id)
        assert reference is not None  # finalize read its result a moment ago
        planned: list[PlannedTask] = []
        for d in derived:
            positions = displaced_positions(
                reference.value.spec.positions, _displacement(d), job.request.delta
            )
            spec = reference.value.spec.model_copy(update={"positions": positions.tolist()})
            if scoped_task_id(spec) != d.task_id:
                self.fail_job(
                    job.job_id,
                    ErrorInfo(
                        code="tasks_missing",
                        message=f"{reason}, but point {d.name} cannot be rebuilt from the "
                        "reference task; submit the job again with symmetry 'off'",
                        source=ErrorSource.INTERNAL,
                    ),
                )
                return
            planned.append(PlannedTask(displacement=_displacement(d), spec=spec, task_id=d.task_id))
        updated = self.store.mutate_job(job.job_id, change).value
        if updated.state.terminal:
            return
        self._attach(updated, Plan(structure=updated.structure, tasks=planned))
        if self.dispatcher is None:
            with contextlib.suppress(AlreadyExists):
                self.store.create_document(
                    f"{DISPATCH_REQUESTS}{job.job_id}",
                    DispatchRequest(job_id=job.job_id, task_ids=[p.task_id for p in planned]),
                )

    def dispatch_requested(self) -> int:
        """Dispatch the tasks that dispatcher-less services (workers) added to jobs."""
        if self.dispatcher is None:
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
                    self._dispatch(queued)
                    count += len(queued)
            self.store.delete_document(key)
        return count

    # ------------------------------------------------------------------ maintenance

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
                self.task_failed(task)
        if requeued:
            self._dispatch(requeued)
        return len(changed)

    def recover(self) -> int:
        """After a restart: re-dispatch every queued task and settle every active job."""
        return self.reconcile(stale_after=0.0)

    def reconcile(self, stale_after: float) -> int:
        """Repair what a crash or a store outage left half-done; returns tasks re-dispatched.

        For every active job: count tasks that finished but were not counted,
        fail the job of a task that failed, finish a job whose tasks are all
        done, and re-dispatch queued tasks that have waited for a worker more
        than ``stale_after`` seconds since they were last dispatched (a
        dispatch lost to a crash or an outage; duplicates are harmless since
        workers claim through the store).
        """
        t = now()
        pending: dict[str, Task] = {}
        queued: set[str] = set()
        for job_id in self.store.all_job_ids():
            found_job = self.store.get_job(job_id)
            if found_job is None or found_job.value.state.terminal:
                continue
            job = found_job.value
            for task_id in {ref.task_id for ref in job.tasks} - set(job.done_task_ids):
                found = self.store.get_task(task_id)
                if found is None:
                    # Its submission was cut before creating every task: create them now.
                    self._repair_tasks(job)
                    found = self.store.get_task(task_id)
                    if found is None:
                        continue
                task = found.value
                if task.state is TaskState.DONE:
                    self._mark_task_done(job_id, task_id)
                elif task.state is TaskState.FAILED:
                    self.task_failed(task)
                elif task.state is TaskState.QUEUED and task_id not in pending:
                    queued.add(task_id)
                    last = max(task.ready_at, self._last_dispatch.get(task_id, 0.0))
                    if t - last >= stale_after:
                        self.store.mark_ready(task)
                        pending[task_id] = task
            refreshed = self.store.get_job(job_id)
            if (
                refreshed is not None
                and not refreshed.value.state.terminal
                and refreshed.value.done_tasks == refreshed.value.total_tasks
            ):
                self.finalize(job_id)
        self._last_dispatch = {
            task_id: at
            for task_id, at in self._last_dispatch.items()
            if task_id in queued or at >= t
        }
        if pending:
            self._dispatch(list(pending.values()))
        return len(pending)

    def prune_reference_densities(self) -> int:
        """Delete shipped reference densities (warm starts on other workers) stored more
        than ``warm_start_share_ttl_seconds`` ago; returns how many."""
        cutoff = now() - self.settings.warm_start_share_ttl_seconds
        return self.store.prune_reference_densities(cutoff)

    def _repair_tasks(self, job: Job) -> None:
        """Create the tasks of a job whose submission was cut by an outage or a crash."""
        try:
            _, plan = self.plan(job.request, scope=job.reuse_scope)
        except ZpeError as exc:
            self.fail_job(job.job_id, error_info(exc))
            return
        if not {ref.task_id for ref in job.tasks} <= {ref.task_id for ref in plan.refs}:
            # The engine version moved since (task keys include it): cannot rebuild.
            self.fail_job(
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
        self._attach(job, plan, repair=True)


def _search_text(job: Job) -> str:
    """What ``search_jobs`` matches a query against."""
    return " ".join(
        [job.request.label or "", hill_formula(job.structure.symbols), job.job_id]
    ).casefold()


#: Store documents (``meta/dispatch-requests/<job>``) naming tasks a worker added to a job.
DISPATCH_REQUESTS = "dispatch-requests/"


def _displacement(d: DerivedPoint) -> Displacement:
    return Displacement(name=d.name, atom=d.atom, axis=d.axis, step=d.step)


def _same_computation(stored: TaskSpec, planned: TaskSpec) -> bool:
    """Whether a stored spec gives the engine what the planned one would: their key
    material (everything that reaches pw.x, see ``task_key``) is the same."""
    return task_key(stored) == task_key(planned)


def _atoms_with_input_masses(job: Job, settings: Settings) -> Atoms:
    """The reference structure with the masses of ATOMIC_SPECIES (isotopes matter)."""
    parsed = parse_qe_input(
        job.request.input_text, max_bytes=settings.max_input_bytes, limits=settings.input_limits
    )
    atoms: Atoms = parsed.atoms.copy()
    standard = atoms.get_masses()
    # pw.x ignores masses in an SCF, so inputs often carry placeholders (1.0 for Cu):
    # take a given mass only where it is a plausible isotope of its element (D, T, 13C...).
    masses = [
        given if 0.5 * std <= given <= 3.5 * std else std
        for given, std in (
            (parsed.masses.get(label, 0.0), std)
            for label, std in zip(parsed.labels, standard, strict=True)
        )
    ]
    atoms.set_masses(masses)
    return atoms
