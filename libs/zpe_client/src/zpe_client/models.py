"""Wire models of the user API: what a client sends and what it reads back.

The server (``zpe_api``), the core (``zpe_core``) and every client share these
classes, so a field means the same on both sides of the wire. They hold data
and validation only; the server's behaviour on them lives in ``zpe_core``.

Job states::

    queued -> running -> done | failed | cancelled
    queued -> failed | cancelled
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Longest job label accepted.
MAX_LABEL_LENGTH = 200
#: A compute server's name, a pull target (a job's ``target``, a server's ``name``).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class ErrorSource(StrEnum):
    """Where a failure came from."""

    INPUT = "input"
    COMPUTE = "compute"
    STORE = "store"
    CONFIGURATION = "configuration"
    DISPATCH = "dispatch"
    INTERNAL = "internal"


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
        pattern=NAME_PATTERN,
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


class AttemptRecord(BaseModel):
    """One attempt at a task, kept for dead-letter history."""

    epoch: int
    worker_id: str
    started_at: float
    ended_at: float | None = None
    outcome: Literal["done", "failed", "expired", "released"] | None = None
    error: ErrorInfo | None = None


class JobSummary(BaseModel):
    """Headline figures copied onto the job when it finishes (for listings)."""

    zpe_ev: float
    s_vib_jmol_k: float
    n_imaginary: int


# ---------------------------------------------------------------------- response bodies


class JobCreated(BaseModel):
    job_id: str
    state: JobState
    created: bool
    links: dict[str, str]


class Progress(BaseModel):
    done: int
    total: int
    fraction: float
    reused: int


class JobStatus(BaseModel):
    job_id: str
    state: JobState
    engine: str
    label: str | None = Field(description="The request's label, if it had one.")
    formula: str = Field(description="Hill order, one element per word: 'C Cu8 O'.")
    delta: float
    nfree: int
    temperature: float
    progress: Progress
    natoms: int
    mobile_indices: list[int]
    created_at: float
    started_at: float | None
    finished_at: float | None
    elapsed_seconds: float | None
    error: ErrorInfo | None
    summary: JobSummary | None
    links: dict[str, str]


class JobList(BaseModel):
    jobs: list[JobStatus]
    next_cursor: str | None


class TaskStates(BaseModel):
    job_id: str
    states: dict[str, int]
