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
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from zpe_client.models import (
    AttemptRecord,
    ErrorInfo,
    JobRequest,
    JobState,
    JobSummary,
    TaskResult,
    TaskSpec,
    TaskState,
)
from zpe_core.errors import ZpeError

#: The pull target of jobs that name none (and of servers enrolled without targets).
DEFAULT_TARGET = "default"


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


def error_info(exc: ZpeError) -> ErrorInfo:
    """The stored and shown form of a failure."""
    return ErrorInfo(
        code=exc.code,
        message=exc.message,
        source=exc.source,
        detail=exc.detail,
        retryable=exc.retryable,
    )


def now() -> float:
    """Wall-clock time in seconds since the epoch (one place, so tests can reason about it)."""
    return time.time()


class Lease(BaseModel):
    """A worker's time-bounded claim on a task. ``epoch`` fences stale holders."""

    lease_id: str
    epoch: int
    worker_id: str
    expires_at: float
    acquired_at: float


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
    done_task_ids: list[str] = Field(
        default_factory=list,
        description="Written when the job ends: its done tasks then. While it runs, its "
        "progress is its done markers in the store (JobService.done_task_ids).",
    )
    reused_task_ids: list[str] = Field(
        default_factory=list, description="Tasks done before the job wanted them (at submit)."
    )
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
