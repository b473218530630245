"""Wire models of the worker API and the admin API (``http-pull`` mode).

Compute servers enroll, lease tasks, heartbeat and report results or failures
with these bodies; admins manage servers, dead letters and the operations
switches. The pull worker and the API share them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator

from zpe_client.models import NAME_PATTERN, AttemptRecord, ErrorInfo, TaskResult, TaskSpec

#: An idempotency id of a worker's post (a retried post carries the same one).
EVENT_ID_PATTERN = r"^[A-Za-z0-9._-]{8,100}$"

Switch = Literal["submission_enabled", "dequeue_enabled"]


class Capabilities(BaseModel):
    """What a compute server can run, as it reports it."""

    model_config = ConfigDict(extra="forbid")

    engines: dict[str, str] = Field(
        default_factory=dict,
        max_length=16,
        description="Engine name -> version it computes with, e.g. {'qe': 'qe-7.2'}.",
    )
    cores: int | None = Field(default=None, ge=1, le=1_000_000)
    max_concurrency: int = Field(default=1, ge=1, le=1024)
    pw_command: str | None = Field(default=None, max_length=300)
    hostname: str | None = Field(default=None, max_length=255)


class SwitchChange(BaseModel):
    """One audit entry: who changed which switch, when, from what to what, and why."""

    at: float
    actor: str
    switch: Switch
    old: bool
    new: bool
    reason: str | None = None


Target = Annotated[str, Field(pattern=NAME_PATTERN)]
EventId = Annotated[str, Field(pattern=EVENT_ID_PATTERN)]
CODE_PATTERN = r"^[a-z0-9_]{1,64}$"


class EnrollTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: list[Target] | None = Field(
        default=None, max_length=32, description="Targets servers enrolled with it may serve."
    )
    ttl_seconds: float | None = Field(
        default=None, gt=0, le=7 * 24 * 3600, description="Default ZPE_ENROLL_TOKEN_TTL_SECONDS."
    )
    note: str | None = Field(default=None, max_length=200)


class EnrollTokenIssued(BaseModel):
    token: str = Field(description="Shown once; only its digest is stored.")
    token_id: str
    targets: list[str]
    expires_at: float


class ServerRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    targets: list[Target] | None = Field(
        default=None, max_length=32, description="Default: every target the enroll token allows."
    )
    capabilities: Capabilities = Field(default_factory=Capabilities)


class ServerEnrolled(BaseModel):
    server_id: str
    worker_token: str = Field(description="Shown once; keep it in a file only you can read.")
    token_expires_at: float
    targets: list[str]


class TokenRenewed(BaseModel):
    server_id: str
    worker_token: str
    token_expires_at: float


class ServerView(BaseModel):
    """A compute server as admins see it (no token digests)."""

    server_id: str
    name: str
    labels: dict[str, str]
    targets: list[str]
    capabilities: Capabilities
    created_at: float
    last_seen_at: float | None
    token_expires_at: float
    revoked: bool
    revoked_at: float | None
    revoked_by: str | None
    running: dict[str, int] = Field(description="Task id -> lease epoch it holds now.")
    tasks_done: int
    tasks_failed: int


class ServerList(BaseModel):
    servers: list[ServerView]


class LeaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wait_seconds: float = Field(
        default=0.0, ge=0, le=600, description="Long-poll up to this (capped by the server)."
    )
    capabilities: Capabilities | None = Field(
        default=None, description="Current capabilities (engine versions), if they changed."
    )


class LeaseGranted(BaseModel):
    task_id: str
    lease_id: str
    epoch: int
    expires_at: float
    lease_seconds: float
    heartbeat_seconds: float
    spec: TaskSpec
    job_ids: list[str]


class LeaseRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epoch: int = Field(ge=1)
    lease_id: str = Field(min_length=1, max_length=64)


class HeartbeatAnswer(BaseModel):
    task_id: str
    epoch: int
    expires_at: float


class ResultBody(BaseModel):
    """Energy and forces as a worker submits them (finite numbers only)."""

    model_config = ConfigDict(extra="forbid")

    energy_ev: FiniteFloat
    forces_ev_per_a: list[Annotated[list[FiniteFloat], Field(min_length=3, max_length=3)]] = Field(
        min_length=1, max_length=100_000
    )
    engine: str = Field(max_length=32)
    engine_version: str = Field(max_length=100)
    wall_seconds: FiniteFloat = Field(default=0.0, ge=0)
    scf_iterations: int | None = Field(default=None, ge=0)
    warm_started: bool = False
    cpu_seconds: FiniteFloat | None = Field(default=None, ge=0)

    def to_result(self) -> TaskResult:
        return TaskResult(**self.model_dump())


class ResultSubmission(LeaseRef):
    event_id: EventId | None = Field(default=None, description="Or the X-Event-Id header.")
    result: ResultBody


class FailureBody(BaseModel):
    """A failed attempt as a worker reports it."""

    model_config = ConfigDict(extra="forbid")

    retryable: bool = Field(description="False for permanent failures (a pw.x input error).")
    code: str = Field(default="engine_failed", pattern=CODE_PATTERN)
    reason: str = Field(min_length=1, max_length=2000)
    detail: str | None = Field(default=None, max_length=8000, description="e.g. pw.x output tail")


class FailureReport(LeaseRef, FailureBody):
    event_id: EventId | None = Field(default=None, description="Or the X-Event-Id header.")


# ---------------------------------------------------------------------- batched protocol
# A worker with several free slots leases, heartbeats and reports several tasks per
# request; each item keeps its own lease (epoch, lease id) and event id, and is answered
# on its own: a stale item is refused without touching the others.

#: The schema's bound; ``ZPE_PULL_BATCH_MAX`` (at most this) is the one enforced.
BATCH_SCHEMA_MAX = 256


class LeaseBatchRequest(LeaseRequest):
    max_tasks: int = Field(
        default=1,
        ge=1,
        le=BATCH_SCHEMA_MAX,
        description="Lease up to this many tasks (the free slots); at most ZPE_PULL_BATCH_MAX.",
    )


class LeaseBatch(BaseModel):
    leases: list[LeaseGranted] = Field(description="At least one; 204 instead of none.")
    batch_max: int = Field(description="Most tasks one batched request may name here.")


class HeldLease(LeaseRef):
    task_id: str = Field(min_length=1, max_length=128)


class HeartbeatBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    leases: list[HeldLease] = Field(min_length=1, max_length=BATCH_SCHEMA_MAX)


class OutcomeItem(HeldLease):
    """A result or a failure of one task, under its lease, with its own event id."""

    event_id: EventId
    result: ResultBody | None = None
    failure: FailureBody | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> OutcomeItem:
        if (self.result is None) == (self.failure is None):
            raise ValueError("an outcome has exactly one of result and failure")
        return self


class OutcomeBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcomes: list[OutcomeItem] = Field(min_length=1, max_length=BATCH_SCHEMA_MAX)


class ItemAnswer(BaseModel):
    """The answer to one item of a batch: the status and body its single-task route gives."""

    task_id: str
    status: int = Field(description="200, or the error status the single-task route answers.")
    answer: dict[str, Any] | None = Field(default=None, description="When status is 200.")
    code: str | None = Field(default=None, description="The problem code, when not 200.")
    detail: str | None = None


class BatchAnswer(BaseModel):
    items: list[ItemAnswer] = Field(description="One per item, in the request's order.")


class DeadLetter(BaseModel):
    task_id: str
    state: str
    attempts: int
    engine: str
    engine_version: str
    natoms: int
    targets: list[str]
    job_ids: list[str]
    error: ErrorInfo | None
    history: list[AttemptRecord]
    updated_at: float


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetter]


class RequeueRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resubmit_jobs: bool = Field(
        default=True,
        description="Submit the jobs it failed again (same request and owner) as new jobs.",
    )


class Requeued(BaseModel):
    task_id: str
    state: str
    resubmitted_jobs: dict[str, str] = Field(description="Failed job id -> its new job id.")


class SwitchesView(BaseModel):
    submission_enabled: bool
    dequeue_enabled: bool
    updated_at: float | None
    updated_by: str | None
    reason: str | None
    audit: list[SwitchChange]


class SwitchesUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    submission_enabled: bool | None = None
    dequeue_enabled: bool | None = None
    actor: str = Field(default="admin", min_length=1, max_length=100, description="Who.")
    reason: str | None = Field(default=None, max_length=500)
