"""Response bodies of the user API."""

from __future__ import annotations

from pydantic import BaseModel, Field

from zpe_core.jobs.models import ErrorInfo, Job, JobState, JobSummary, hill_formula


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

    @classmethod
    def from_job(cls, job: Job, now: float) -> JobStatus:
        total = job.total_tasks
        start = job.started_at
        end = job.finished_at or (now if start is not None else None)
        return cls(
            job_id=job.job_id,
            state=job.state,
            engine=job.engine,
            label=job.request.label,
            formula=hill_formula(job.structure.symbols),
            delta=job.request.delta,
            nfree=job.request.nfree,
            temperature=job.request.temperature,
            progress=Progress(
                done=job.done_tasks,
                total=total,
                fraction=round(job.done_tasks / total, 4) if total else 1.0,
                reused=len(job.reused_task_ids),
            ),
            natoms=job.structure.natoms,
            mobile_indices=job.structure.mobile_indices,
            created_at=job.created_at,
            started_at=start,
            finished_at=job.finished_at,
            elapsed_seconds=None if start is None or end is None else round(end - start, 3),
            error=job.error,
            summary=job.summary,
            links=job_links(job.job_id),
        )


class JobList(BaseModel):
    jobs: list[JobStatus]
    next_cursor: str | None


class TaskStates(BaseModel):
    job_id: str
    states: dict[str, int]


def job_links(job_id: str) -> dict[str, str]:
    base = f"/calc/zpe/jobs/{job_id}"
    return {
        "self": base,
        "result": f"{base}/result",
        "summary": f"{base}/files?kind=summary",
        "freqs": f"{base}/files?kind=freqs",
        "input": f"{base}/files?kind=input",
        "cancel": f"{base}/cancel",
    }
