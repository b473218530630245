"""The displacement plan: a job's tasks and their content-addressed keys.

A task's key is a SHA-256 of everything that determines its forces: engine
and engine version, species, positions after displacement, cell, periodicity,
the namelists that matter, k-points and the pseudopotential files (name and
content digest). Two jobs that need the same point get the same key and
share one task; a finished task is reused by any later job.

With a reuse scope (``ZPE_REUSE_SCOPE=owner``) a task is stored under
``scoped_task_id``: a hash of the scope and the content key, so jobs of
different owners never share (or learn of) each other's tasks.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from zpe_client.models import JobRequest, QeCalcSpec, TaskSpec
from zpe_core.errors import InputError
from zpe_core.jobs.models import StructureInfo, TaskRef
from zpe_core.physics.analysis import Displacement, displaced_positions, displacements
from zpe_core.physics.namelists import role_of
from zpe_core.physics.qe_input import ParsedInput, check_species_labels


def engine_owned(section: str, key: str) -> bool:
    """Whether the qe engine sets ``key`` of ``&section`` itself (the table:
    :data:`zpe_core.physics.namelists.NAMELIST_KEYS`); owned keys are not in task keys
    (``ibrav=1, celldm(1)=...`` and ``ibrav=0`` + ``CELL_PARAMETERS`` share a key)."""
    return role_of(section, key) == "owned"


def check_plan_cost(natoms: int, ntasks: int, max_positions: int) -> None:
    """Refuse a job whose specs would hold more than ``max_positions`` atom positions
    (tasks x atoms), before any spec is built."""
    if natoms * ntasks > max_positions:
        raise InputError(
            f"{ntasks} tasks of {natoms} atoms each exceed this service's limit of "
            f"{max_positions} atom positions per job (tasks x atoms): fewer mobile atoms "
            "or a smaller structure",
            code="job_too_costly",
        )


@dataclass(frozen=True)
class PlannedTask:
    """One displacement of a job, with its spec and content key."""

    displacement: Displacement
    spec: TaskSpec
    task_id: str


@dataclass(frozen=True)
class Plan:
    structure: StructureInfo
    tasks: list[PlannedTask]

    @property
    def refs(self) -> list[TaskRef]:
        return [TaskRef(name=t.displacement.name, task_id=t.task_id) for t in self.tasks]


def build_plan(
    parsed: ParsedInput,
    mobile: list[int],
    request: JobRequest,
    *,
    engine: str,
    engine_version: str,
    pseudo_dir: str | None,
    reuse_scope: str | None = None,
) -> Plan:
    """Every displacement point of the job, each as a task spec with its id.

    ``reuse_scope`` (``owner_scope``): the tasks are shared only with jobs of that scope.
    """
    atoms = parsed.atoms
    symbols = list(atoms.get_chemical_symbols())
    check_species_labels(parsed)
    qe: QeCalcSpec | None = None
    if engine == "qe":
        qe = QeCalcSpec(
            input_data=parsed.input_data,
            pseudopotentials=dict(parsed.species),
            pseudo_digests={
                label: pseudo_digest(pseudo_dir, name) for label, name in parsed.species.items()
            },
            kpts=list(parsed.kpts) if parsed.kpts is not None else None,
            koffset=list(parsed.koffset),
        )
    cell = atoms.cell.array.tolist()
    pbc = [bool(x) for x in atoms.pbc]
    reference = atoms.positions.copy()
    tasks: list[PlannedTask] = []
    for disp in displacements(mobile, request.nfree):
        positions = displaced_positions(reference, disp, request.delta)
        spec = TaskSpec(
            engine=engine,
            engine_version=engine_version,
            symbols=symbols,
            positions=positions.tolist(),
            cell=cell,
            pbc=pbc,
            qe=qe,
            reuse_scope=reuse_scope,
        )
        tasks.append(PlannedTask(displacement=disp, spec=spec, task_id=scoped_task_id(spec)))
    # Every task of the job names the job's undisplaced point (the first task): a worker
    # that computed it may start the displaced SCFs from its converged density. It is the
    # stored (scoped) id, so a worker's cache never warm-starts one owner's task from
    # another owner's density.
    reference_key = tasks[0].task_id
    for planned in tasks:
        planned.spec.reference_key = reference_key
    fixed = set(parsed.fixed_indices)
    structure = StructureInfo(
        natoms=len(atoms),
        symbols=symbols,
        mobile_indices=list(mobile),
        fixed_indices=sorted(fixed),
        kpts=list(parsed.kpts) if parsed.kpts is not None else None,
        koffset=list(parsed.koffset),
        ecutwfc=_float_or_none(parsed.input_data.get("system", {}).get("ecutwfc")),
        ecutrho=_float_or_none(parsed.input_data.get("system", {}).get("ecutrho")),
        pseudo_dir=pseudo_dir,
        free_molecule=not fixed
        and not parsed.partially_fixed_indices
        and len(mobile) == len(atoms),
    )
    return Plan(structure=structure, tasks=tasks)


def is_reference(spec: TaskSpec) -> bool:
    """Whether ``spec`` is its job's undisplaced point, the source of warm starts."""
    # The reference key is the job's stored (owner-scoped) task id of its first point.
    return spec.reference_key is not None and scoped_task_id(spec) == spec.reference_key


def task_key(spec: TaskSpec) -> str:
    """The content hash that identifies a point: equal keys give equal forces.

    In the key: everything that reaches pw.x (species, every atom's position, fixed
    ones included, cell, every ``passed`` namelist key, k-points, pseudopotential
    names and file digests) and the engine version. Not in the key: masses (only
    the job's Hessian uses them), keys that never reach pw.x (``owned`` ones the
    engine sets itself, ``dropped`` ones such as ``title`` or ``max_seconds``; see
    :mod:`zpe_core.physics.namelists`) and ``reference_key`` (the warm-start hint: a converged
    SCF agrees with a cold one within ``conv_thr``, see docs/benchmarks.md).
    """
    material: dict[str, Any] = {
        "engine": spec.engine,
        "engine_version": spec.engine_version,
        "symbols": spec.symbols,
        "positions": [[round(x, 9) for x in row] for row in spec.positions],
        "cell": [[round(x, 9) for x in row] for row in spec.cell],
        "pbc": spec.pbc,
    }
    if spec.qe is not None:
        material["qe"] = {
            "input_data": {
                section.lower().lstrip("&"): {
                    k.lower(): v for k, v in values.items() if role_of(section, k) == "passed"
                }
                for section, values in spec.qe.input_data.items()
            },
            "pseudopotentials": spec.qe.pseudopotentials,
            "pseudo_digests": spec.qe.pseudo_digests,
            "kpts": spec.qe.kpts,
            "koffset": spec.qe.koffset,
        }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return "t" + hashlib.sha256(canonical.encode()).hexdigest()


def owner_scope(owner: str) -> str:
    """The reuse scope of one owner's tasks (a digest: specs travel to workers)."""
    return "owner-" + hashlib.sha256(f"zpe-reuse\n{owner}".encode()).hexdigest()[:32]


def scoped_task_id(spec: TaskSpec) -> str:
    """The id a task is stored under: its content key (``task_key``) when it is shared
    by every owner, else a hash of its reuse scope and its content key."""
    key = task_key(spec)
    if spec.reuse_scope is None:
        return key
    return "t" + hashlib.sha256(f"{spec.reuse_scope}\n{key}".encode()).hexdigest()


def pseudo_digest(pseudo_dir: str | None, filename: str) -> str | None:
    """SHA-256 of a pseudopotential file, or ``None`` where this process cannot see it
    (the control plane of a split deployment has no pseudopotentials).

    A name that is not a regular file (a directory, a FIFO that would block the read)
    raises :class:`InputError` ``bad_pseudopotential``.
    """
    if not pseudo_dir:
        return None
    path = Path(pseudo_dir) / filename
    try:
        info = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(
            f"pseudopotential {filename!r} is not a regular file in the pseudopotential directory",
            code="bad_pseudopotential",
        )
    return _digest_file(str(path), info.st_mtime_ns, info.st_size)


@lru_cache(maxsize=256)
def _digest_file(path: str, mtime_ns: int, size: int) -> str:
    del mtime_ns, size  # part of the cache key: a changed file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _float_or_none(value: object) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    return None


def request_fingerprint(request: JobRequest) -> str:
    """A digest of the payload, to tell an idempotent retry from a reused key."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_job_id() -> str:
    """An unguessable job id (128 random bits)."""
    return "j" + os.urandom(16).hex()
