"""Finishing a job: the Hessian from its tasks' forces, the frequencies, the ZPE
and the artifacts, then the job done (or failed with the reason).

Only the caller whose compare-and-swap completed the job's task set runs it
(``TaskOutcomes.mark_tasks_done``); it is idempotent, so recovery repairs a
crash half-way by running it again. A symmetry-reduced job whose reference
forces break the symmetry grows by the points it meant to rebuild instead.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
from ase import Atoms

from zpe_client.models import ErrorInfo, ErrorSource, JobState, JobSummary
from zpe_core.errors import AlreadyExists, StoreUnavailable, ZpeError
from zpe_core.jobs.dispatching import TaskDispatch
from zpe_core.jobs.models import DerivedPoint, DispatchRequest, Job, TaskRef, error_info, now
from zpe_core.jobs.outcomes import TaskOutcomes, with_done_tasks
from zpe_core.jobs.submission import Submission
from zpe_core.physics.analysis import Displacement, analyze, displaced_positions
from zpe_core.physics.artifacts import build_artifacts
from zpe_core.physics.plan import Plan, PlannedTask, scoped_task_id
from zpe_core.physics.qe_input import parse_qe_input
from zpe_core.physics.symmetry import broken_by_reference, rebuild_job_forces
from zpe_core.settings import ServiceSettings
from zpe_core.store.base import JobStore

log = logging.getLogger("zpe.service")


class Finalizer:
    """Assembles finished jobs."""

    def __init__(
        self,
        store: JobStore,
        settings: ServiceSettings,
        outcomes: TaskOutcomes,
        submission: Submission,
        dispatch: TaskDispatch,
    ) -> None:
        self.store = store
        self.settings = settings
        self._outcomes = outcomes
        self._submission = submission
        self._dispatch = dispatch

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
            atoms = atoms_with_input_masses(job, self.settings)
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
        except StoreUnavailable:
            # An outage is not the job's fault: it stays running, the elected finisher's
            # election stands, and the next reconcile finishes it (idempotent).
            raise
        except ZpeError as exc:
            self._outcomes.fail_job(job_id, error_info(exc))
            return
        except Exception as exc:  # never leave a job running forever on a bug
            log.exception("finalize failed", extra={"job_id": job_id})
            self._outcomes.fail_job(
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
            return with_done_tasks(self.store, job)

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
                self._outcomes.fail_job(
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
        self._submission.attach(updated, Plan(structure=updated.structure, tasks=planned))
        if self._dispatch.dispatcher is None:
            with contextlib.suppress(AlreadyExists):
                self.store.create_document(
                    f"{DISPATCH_REQUESTS}{job.job_id}",
                    DispatchRequest(job_id=job.job_id, task_ids=[p.task_id for p in planned]),
                )


#: Store documents (``meta/dispatch-requests/<job>``) naming tasks a worker added to a job.
DISPATCH_REQUESTS = "dispatch-requests/"


def _displacement(d: DerivedPoint) -> Displacement:
    return Displacement(name=d.name, atom=d.atom, axis=d.axis, step=d.step)


def atoms_with_input_masses(job: Job, settings: ServiceSettings) -> Atoms:
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
