"""Symmetry-reduced plans: counts, exact rebuild, shared task keys and the
reference-force guard, on the mock engine through ``JobService``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from zpe_client.models import JobRequest, JobState, TaskResult, TaskSpec
from zpe_core.dispatch.base import JobDispatcher
from zpe_core.engines.mock import MockEngine
from zpe_core.jobs.models import Job, Task
from zpe_core.jobs.service import DISPATCH_REQUESTS, JobService
from zpe_core.physics.preview import preview_request
from zpe_core.physics.symmetry import FORCE_TOLERANCE
from zpe_core.settings import Settings
from zpe_core.store import open_store

SAMPLES = Path(__file__).resolve().parents[3] / "samples"
SETTINGS = Settings(store_url="memory://", default_engine="mock", allowed_engines="mock")

ForcesFn = Callable[[TaskSpec], TaskResult]


def qe_text(atoms: Atoms) -> str:
    """A pw.x input for ``atoms`` (cell and positions in Å, written exactly)."""
    species = sorted(set(atoms.get_chemical_symbols()))
    cell = "\n".join(" ".join(repr(float(x)) for x in row) for row in atoms.cell.array)
    positions = "\n".join(
        f"{s} " + " ".join(repr(float(x)) for x in p)
        for s, p in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)
    )
    return (
        "&CONTROL\n calculation='scf'\n/\n"
        f"&SYSTEM\n ibrav=0, nat={len(atoms)}, ntyp={len(species)}, ecutwfc=30.0\n/\n"
        "&ELECTRONS\n/\nATOMIC_SPECIES\n"
        + "".join(f"{s} 1.0 {s}.pbe-kjpaw.UPF\n" for s in species)
        + f"CELL_PARAMETERS angstrom\n{cell}\nATOMIC_POSITIONS angstrom\n{positions}\n"
        "K_POINTS gamma\n"
    )


def in_box(name: str, box: float = 12.0) -> str:
    atoms = molecule(name)
    atoms.cell = [box, box, box]
    atoms.center()
    return qe_text(atoms)


def nh3_c3_along_111() -> str:
    """NH3 with its C3 axis along [111], exactly symmetric (cyclic permutations)."""
    c = np.full(3, 5.0)
    h = np.array([0.9, -0.45, -0.45])
    positions = [c + 0.33] + [c + np.roll(h, k) for k in range(3)]
    return qe_text(Atoms("NH3", positions=positions, cell=[10.0] * 3, pbc=True))


INPUTS: dict[str, str] = {
    **{path.stem: path.read_text() for path in sorted(SAMPLES.glob("*.in"))},
    "CH4": in_box("CH4"),
    "NH3": in_box("NH3"),
    "C6H6": in_box("C6H6"),
    "CO2": in_box("CO2"),
    "NH3_111": nh3_c3_along_111(),
}

# (points computed, points of the full plan), nfree=2, reference included.
COUNTS = {
    "h2_zpe": (4, 13),
    "h2o_zpe": (10, 19),
    "co_zpe": (7, 13),
    "nh3_zpe": (17, 25),
    "cu_slab_co": (7, 13),
    "CH4": (4, 31),
    "NH3": (17, 25),
    "C6H6": (19, 73),
    "CO2": (6, 19),
    "NH3_111": (7, 25),
}


def mock_forces(spec: TaskSpec) -> TaskResult:
    return MockEngine().compute(spec, Path("."))


def run_all(service: JobService, forces: ForcesFn = mock_forces) -> int:
    """Compute every queued task (as a worker would) until none is left; returns how many."""
    count = 0
    while (task := service.store.claim_next("w", 60.0)) is not None:
        assert task.lease is not None
        committed, _ = service.store.commit_result(
            task.task_id, task.lease.epoch, forces(task.spec)
        )
        service.task_succeeded(committed)
        count += 1
    return count


def finished(service: JobService, job_id: str) -> tuple[Job, dict[str, object]]:
    job, _ = service.get_job(job_id)
    assert job.state is JobState.DONE, job.error
    return job, service.get_result(job_id)


def run_job(
    text: str, symmetry: str, *, nfree: int = 2, service: JobService | None = None
) -> tuple[Job, dict[str, object], int]:
    service = service or JobService(open_store("memory://"), None, SETTINGS)
    job, _ = service.submit(
        JobRequest(input_text=text, symmetry=symmetry, nfree=nfree),  # type: ignore[arg-type]
        owner="u",
    )
    computed = run_all(service)
    job, result = finished(service, job.job_id)
    return job, result, computed


def freqs(result: dict[str, object]) -> np.ndarray:
    """The wavenumbers of the modes that are not translations/rotations of a free molecule.

    Those sit at |nu| < 1e-3 cm^-1 on the mock engine, where a wavenumber is the square
    root of an eigenvalue at rounding level and differs between any two evaluation orders.
    """
    modes = result["modes"]
    assert isinstance(modes, list)
    return np.array([m["frequency_cm"] for m in modes if not m["excluded"]], dtype=float)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_reduced_plan_counts_and_frequencies_equal_the_full_plan(name: str) -> None:
    _, reduced, computed = run_job(INPUTS[name], "auto")
    _, full, full_computed = run_job(INPUTS[name], "off")
    want_computed, want_full = COUNTS[name]
    assert (computed, full_computed) == (want_computed, want_full)
    assert reduced["symmetry"]["points_computed"] == want_computed  # type: ignore[index]
    assert reduced["symmetry"]["points_full"] == want_full  # type: ignore[index]
    assert reduced["symmetry"]["reason"] is None  # type: ignore[index]
    assert full["symmetry"]["points_computed"] == want_full  # type: ignore[index]
    assert full["symmetry"]["reason"] == "symmetry off in the request"  # type: ignore[index]
    assert np.max(np.abs(freqs(reduced) - freqs(full))) < 1e-6
    assert reduced["counted_modes"] == full["counted_modes"]
    assert abs(float(reduced["zpe_ev"]) - float(full["zpe_ev"])) < 1e-9  # type: ignore[arg-type]
    # The preview tells the same counts before anything runs.
    preview = preview_request(JobRequest(input_text=INPUTS[name]), SETTINGS)
    assert (preview.tasks_symmetric, preview.tasks) == (want_computed, want_full)


@pytest.mark.parametrize(("name", "want"), [("h2o_zpe", (19, 37)), ("CH4", (7, 61))])
def test_nfree_4_is_rebuilt_exactly(name: str, want: tuple[int, int]) -> None:
    _, reduced, computed = run_job(INPUTS[name], "auto", nfree=4)
    _, full, full_computed = run_job(INPUTS[name], "off", nfree=4)
    assert (computed, full_computed) == want
    assert np.max(np.abs(freqs(reduced) - freqs(full))) < 1e-6


def test_reduced_points_are_full_plan_points_and_are_reused_both_ways() -> None:
    text = INPUTS["h2o_zpe"]
    service = JobService(open_store("memory://"), None, SETTINGS)
    reduced_job, _, computed = run_job(text, "auto", service=service)
    full_job, _, full_computed = run_job(text, "off", service=service)
    reduced_ids = {ref.task_id for ref in reduced_job.tasks}
    assert reduced_ids < {ref.task_id for ref in full_job.tasks}
    assert (computed, full_computed) == (10, 9)  # the full job reused the 10
    assert set(full_job.reused_task_ids) == reduced_ids
    # And the other way round: a reduced job after a full one computes nothing.
    other = JobService(open_store("memory://"), None, SETTINGS)
    run_job(text, "off", service=other)
    again, result, computed = run_job(text, "auto", service=other)
    assert computed == 0 and len(again.reused_task_ids) == 10
    assert result["symmetry"]["points_computed"] == 10  # type: ignore[index]


def distorted_h2o(shift: float) -> str:
    """The H2O sample with one H moved along x by ``shift`` Å."""
    return INPUTS["h2o_zpe"].replace("H  5.765412", f"H  {5.765412 + shift:.6f}")


def test_a_distorted_geometry_gets_the_full_plan() -> None:
    _, result, computed = run_job(distorted_h2o(1e-3), "auto")
    _, full, _ = run_job(distorted_h2o(1e-3), "off")
    sym = result["symmetry"]
    # Only the molecular-plane mirror survives (10 -> 16), and it is exact.
    assert sym["points_full"] == 19 and computed == sym["points_computed"] == 16  # type: ignore[index]
    assert np.max(np.abs(freqs(result) - freqs(full))) < 1e-6

    # Moved by far less than spglib's 1e-5 Å: the symmetry is found, but the reference
    # forces break it beyond the tolerance, so the job computes every point.
    _, result, computed = run_job(distorted_h2o(6e-6), "auto")
    _, full, _ = run_job(distorted_h2o(6e-6), "off")
    sym = result["symmetry"]
    assert computed == sym["points_computed"] == sym["points_full"] == 19  # type: ignore[index]
    assert "break the structure's symmetry" in sym["reason"]  # type: ignore[index,operator]
    assert np.max(np.abs(freqs(result) - freqs(full))) < 1e-6


def symmetry_breaking(reference: Sequence[Sequence[float]]) -> ForcesFn:
    """The mock engine, with an asymmetric force added on atom 1 at the reference point."""

    def forces(spec: TaskSpec) -> TaskResult:
        result = mock_forces(spec)
        if np.allclose(spec.positions, reference, atol=0.0):
            result.forces_ev_per_a[1][0] += 10 * FORCE_TOLERANCE
        return result

    return forces


def test_symmetry_breaking_reference_forces_complete_the_plan() -> None:
    text = INPUTS["CH4"]
    worker = JobService(open_store("memory://"), None, SETTINGS)  # a worker: no dispatcher
    job, _ = worker.submit(JobRequest(input_text=text), owner="u")
    reference = worker.store.get_task(job.tasks[0].task_id)
    assert reference is not None
    breaking = symmetry_breaking(reference.value.spec.positions)
    assert run_all(worker, breaking) == 31  # 4, then the 27 the job added itself
    done, result = finished(worker, job.job_id)
    sym = result["symmetry"]
    assert (sym["points_computed"], sym["points_full"]) == (31, 31)  # type: ignore[index]
    assert "reference SCF's forces break" in sym["reason"]  # type: ignore[index,operator]
    assert done.symmetry is not None and done.symmetry.derived == []
    # The worker could not dispatch: it left the added tasks for the control plane.
    assert worker.store.list_documents(DISPATCH_REQUESTS) == [DISPATCH_REQUESTS + job.job_id]
    # And the result is the full job's on the same (perturbed) forces.
    other = JobService(open_store("memory://"), None, SETTINGS)
    full_job, _ = other.submit(JobRequest(input_text=text, symmetry="off"), owner="u")
    run_all(other, breaking)
    _, full = finished(other, full_job.job_id)
    assert np.max(np.abs(freqs(result) - freqs(full))) < 1e-6


class RecordingDispatcher(JobDispatcher):
    name = "recording"

    def __init__(self) -> None:
        self.dispatched: list[str] = []

    def dispatch(self, tasks: Sequence[Task]) -> None:
        self.dispatched.extend(task.task_id for task in tasks)


def test_the_control_plane_dispatches_the_points_a_worker_added() -> None:
    store = open_store("memory://")
    dispatcher = RecordingDispatcher()
    api = JobService(store, dispatcher, SETTINGS)
    worker = JobService(store, None, SETTINGS)
    job, _ = api.submit(JobRequest(input_text=INPUTS["h2o_zpe"]), owner="u")
    assert len(dispatcher.dispatched) == 10
    reference = store.get_task(job.tasks[0].task_id)
    assert reference is not None
    breaking = symmetry_breaking(reference.value.spec.positions)
    for _ in range(10):  # the worker computes the 10 points; the last one's commit grows the job
        task = store.claim_next("w", 60.0)
        assert task is not None and task.lease is not None
        committed, _ = store.commit_result(task.task_id, task.lease.epoch, breaking(task.spec))
        worker.task_succeeded(committed)
    grown, _ = api.get_job(job.job_id)
    assert grown.state is JobState.RUNNING and grown.total_tasks == 19
    api.reap()
    added = {ref.task_id for ref in grown.tasks[10:]}
    assert set(dispatcher.dispatched[10:]) == added and len(added) == 9
    assert store.list_documents(DISPATCH_REQUESTS) == []
    run_all(worker, breaking)
    finished(api, job.job_id)


def test_symmetry_off_and_no_symmetry_say_why_in_the_result() -> None:
    atoms = molecule("H2O")
    atoms.positions[1] += [0.05, -0.03, 0.02]  # no operation left but the identity
    atoms.cell = [11.0, 12.0, 13.0]
    atoms.center()
    _, result, computed = run_job(qe_text(atoms), "auto")
    assert computed == 19
    assert result["symmetry"]["reason"] == (  # type: ignore[index]
        "the structure has no symmetry that relates displaced points"
    )
