"""The job model: jobs, tasks, leases, results and their state machines.

A *job* is one ZPE request. It fans out into *tasks*, one per displacement
(the undisplaced reference plus +/- ``delta`` along x, y, z for every mobile
atom). A task is content-addressed: its id is a hash of everything that
determines its forces, so two jobs needing the same point share one task.

Job states::

    queued -> running -> done | failed | cancelled
    queued -> failed | cancelled

Task states, their transitions and the retry rule: ``zpe_core.jobs.transitions``.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from zpe_core.errors import ErrorSource, ZpeError

#: The pull target of jobs that name none (and of servers enrolled without targets).
DEFAULT_TARGET = "default"


#: Longest job label accepted.
MAX_LABEL_LENGTH = 200


def hill_formula(symbols: Sequence[str]) -> str:
    """The chemical formula in Hill order, one element per word: ``C Cu8 O``, ``H2 O``.

    Hill order puts C first and H second when there is carbon, every other element
    alphabetically; the spaces keep ``Cu8`` readable next to ``C`` and ``O``.
    """
    counts = Counter(symbols)
    order = sorted(counts)
    if "C" in counts:
        order = ["C"] + (["H"] if "H" in counts else []) + [e for e in order if e not in ("C", "H")]
    return " ".join(f"{e}{counts[e] if counts[e] > 1 else ''}" for e in order)


def now() -> float:
    """Wall-clock time in seconds since the epoch (one place, so tests can reason about it)."""
    return time.time()


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class TaskState(StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def settled(self) -> bool:
        """No worker holds or will pick up the task without outside help."""
        return self in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)


class ErrorInfo(BaseModel):
    """A failure as stored on a job or task and shown to users."""

    code: str
    message: str
    source: ErrorSource
    detail: str | None = None
    retryable: bool = False

    @classmethod
    def from_exc(cls, exc: ZpeError) -> ErrorInfo:
        return cls(
            code=exc.code,
            message=exc.message,
            source=exc.source,
            detail=exc.detail,
            retryable=exc.retryable,
        )


class JobRequest(BaseModel):
    """What a user submits."""

    model_config = ConfigDict(extra="forbid")

    input_text: str = Field(description="The pw.x input file, verbatim.")
    mobile: list[int] | None = Field(
        default=None,
        description="0-based indices of the atoms to displace; default: every atom not fixed.",
    )
    delta: float = Field(default=0.01, gt=0.0, le=0.1, description="Displacement in Angstrom.")
    nfree: Literal[2, 4] = Field(default=2, description="Displacements per degree of freedom.")
    temperature: float = Field(
        default=298.15, gt=0.0, le=5000.0, description="Temperature in K for the entropy."
    )
    engine: str | None = Field(default=None, description="'qe' or 'mock'; default from settings.")
    pressure: float = Field(
        default=101325.0,
        gt=0.0,
        le=1e9,
        description="Pressure in Pa for the ideal-gas thermochemistry of a free molecule.",
    )
    symmetry_number: int | None = Field(
        default=None,
        ge=1,
        le=60,
        description="Rotational symmetry number of a free molecule; default: from its point group.",
    )
    frequency_set: Literal["raw", "projected"] = Field(
        default="raw",
        description="Which frequencies count for a free molecule: ASE's raw ones, or those after "
        "projecting rigid translations and rotations out (Eckart).",
    )
    target: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
        description="Pull workers: the compute-server target that may run it; default 'default'.",
    )
    label: str | None = Field(
        default=None,
        max_length=MAX_LABEL_LENGTH,
        description="Free text to tell jobs apart (e.g. 'CO top site, 13C'); searchable "
        "with GET /calc/zpe/jobs?q=.",
    )
    symmetry: Literal["auto", "off"] = Field(
        default="auto",
        description="'auto': compute only the symmetry-independent displaced points and "
        "rebuild the others exactly; 'off': compute every point.",
    )

    @field_validator("label")
    @classmethod
    def _printable_label(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if any(not ch.isprintable() for ch in value):
            raise ValueError("label must be one line of printable text (no control characters)")
        return value.strip() or None


class QeCalcSpec(BaseModel):
    """What the qe engine needs besides the geometry (JSON-safe)."""

    input_data: dict[str, dict[str, Any]]
    pseudopotentials: dict[str, str]
    pseudo_digests: dict[str, str | None] = Field(default_factory=dict)
    kpts: list[int] | None = None  # None: Gamma point
    koffset: list[int] = Field(default_factory=lambda: [0, 0, 0])


class TaskSpec(BaseModel):
    """Everything a worker needs to compute one point: geometry plus engine settings."""

    engine: str
    engine_version: str
    symbols: list[str]
    positions: list[list[float]]
    cell: list[list[float]]
    pbc: list[bool]
    qe: QeCalcSpec | None = None
    reference_key: str | None = Field(
        default=None,
        description="Key of the undisplaced task of the job that planned this task: a "
        "warm-start hint for the engine (its own key on the reference itself). Not part "
        "of the task key: it changes how the SCF starts, not what it converges to.",
    )
    reuse_scope: str | None = Field(
        default=None,
        description="The reuse scope the task's id was derived from (``plan.owner_scope``; "
        "None: shared by every owner). Not part of the content key.",
    )


class TaskResult(BaseModel):
    """Energy and forces of one point, as committed by a worker."""

    energy_ev: float
    forces_ev_per_a: list[list[float]]
    engine: str
    engine_version: str
    wall_seconds: float = 0.0
    scf_iterations: int | None = None
    warm_started: bool = False  # the SCF started from the reference's density (issue 8)
    cpu_seconds: float | None = None  # pw.x's own CPU time (less load-sensitive than wall)
    worker_id: str | None = None


class Lease(BaseModel):
    """A worker's time-bounded claim on a task. ``epoch`` fences stale holders."""

    lease_id: str
    epoch: int
    worker_id: str
    expires_at: float
    acquired_at: float


class AttemptRecord(BaseModel):
    """One attempt at a task, kept for dead-letter history."""

    epoch: int
    worker_id: str
    started_at: float
    ended_at: float | None = None
    outcome: Literal["done", "failed", "expired", "released"] | None = None
    error: ErrorInfo | None = None


class Task(BaseModel):
    """One displacement point, shared by every job that needs it."""

    task_id: str
    spec: TaskSpec
    state: TaskState = TaskState.QUEUED
    subscribers: list[str] = Field(default_factory=list, description="Job ids waiting for it.")
    targets: list[str] = Field(
        default_factory=list, description="Pull targets of its jobs; a server with one runs it."
    )
    attempts: int = 0
    epoch: int = 0
    ready_at: float = 0.0
    lease: Lease | None = None
    result: TaskResult | None = None
    error: ErrorInfo | None = None
    dead_letter: bool = False
    history: list[AttemptRecord] = Field(default_factory=list)
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)


class TaskRef(BaseModel):
    """A job's reference to one of its tasks, with the ASE displacement name."""

    name: str  # ASE naming: "eq", "0x+", "0x-", "0x+2", ...
    task_id: str


class StructureInfo(BaseModel):
    """What was read from the input, kept on the job for the result."""

    natoms: int
    symbols: list[str]
    mobile_indices: list[int]
    fixed_indices: list[int]
    kpts: list[int] | None
    koffset: list[int]
    ecutwfc: float | None
    ecutrho: float | None
    pseudo_dir: str | None
    free_molecule: bool


class SymmetryOperation(BaseModel):
    """``x -> rotation @ x + t``: ``rotation`` a Cartesian signed permutation, atom ``i``
    landing on atom ``permutation[i]``."""

    rotation: list[list[int]]
    permutation: list[int]


class DerivedPoint(BaseModel):
    """A displaced point whose forces are rebuilt from a computed one, not computed."""

    name: str  # ASE naming, as TaskRef.name
    task_id: str  # its key in the full plan (computed after all if the symmetry check fails)
    atom: int
    axis: int
    step: int
    source: str  # the name of the computed point it is the image of
    operation: int  # index into JobSymmetry.operations


class JobSymmetry(BaseModel):
    """How a job uses symmetry: the operations kept and the points they save."""

    mode: Literal["auto", "off"]
    spacegroup: str | None = None
    operations: list[SymmetryOperation] = Field(default_factory=list)
    derived: list[DerivedPoint] = Field(
        default_factory=list, description="Empty when every point is computed."
    )
    points_full: int
    reason: str | None = Field(default=None, description="Why every point is computed.")


class DispatchRequest(BaseModel):
    """Tasks a service without a dispatcher (a worker) added to a job, for the control
    plane to dispatch (a job whose symmetry check failed grows by its derived points)."""

    job_id: str
    task_ids: list[str]


class JobSummary(BaseModel):
    """Headline figures copied onto the job when it finishes (for listings)."""

    zpe_ev: float
    s_vib_jmol_k: float
    n_imaginary: int


class Job(BaseModel):
    """One ZPE request and its progress."""

    job_id: str
    owner: str
    state: JobState = JobState.QUEUED
    request: JobRequest
    engine: str
    structure: StructureInfo
    tasks: list[TaskRef]  # the points computed (a subset of the full plan with symmetry)
    symmetry: JobSymmetry | None = None
    done_task_ids: list[str] = Field(default_factory=list)
    reused_task_ids: list[str] = Field(default_factory=list)
    reuse_scope: str | None = Field(
        default=None, description="The reuse scope of its tasks' ids (None: global)."
    )
    error: ErrorInfo | None = None
    summary: JobSummary | None = None
    idempotency_key: str | None = None
    fingerprint: str
    created_at: float = Field(default_factory=now)
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = Field(default_factory=now)

    @property
    def total_tasks(self) -> int:
        return len({ref.task_id for ref in self.tasks})

    @property
    def done_tasks(self) -> int:
        return len(self.done_task_ids)


T = TypeVar("T")


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """A record with the store revision it was read at (for compare-and-swap)."""

    value: T
    rev: int


@dataclass(frozen=True)
class RetryPolicy:
    """How failed or expired attempts are retried: exponential backoff with jitter."""

    retry_max: int = 3
    backoff_base_seconds: float = 10.0
    backoff_cap_seconds: float = 300.0

    def backoff(self, attempts: int) -> float:
        """Delay before attempt ``attempts + 1`` (``attempts`` >= 1 already failed)."""
        ceiling = min(self.backoff_cap_seconds, self.backoff_base_seconds * 2 ** (attempts - 1))
        return random.uniform(ceiling / 2, ceiling)
