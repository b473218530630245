"""The user API: submit, poll, fetch results, list, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from zpe_api.deps import (
    OwnerDep,
    ServiceDep,
    SettingsDep,
    get_app_settings,
    poll_limit,
    polling_owner,
    require_submission_enabled,
    status_cache,
)
from zpe_api.problems import problem_responses
from zpe_client.models import JobCreated, JobList, JobRequest, JobStatus, Progress, TaskStates
from zpe_core.control.limits import check_active_jobs
from zpe_core.errors import InputError
from zpe_core.jobs.models import Job, hill_formula, now
from zpe_core.physics.artifacts import ARTIFACT_MEDIA_TYPES, ARTIFACT_NAMES

router = APIRouter(
    prefix="/calc/zpe", tags=["jobs"], responses=problem_responses(400, 401, 422, 503)
)


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


def progress(done: int, total: int, reused: int) -> Progress:
    return Progress(
        done=done,
        total=total,
        fraction=round(done / total, 4) if total else 1.0,
        reused=reused,
    )


def elapsed_seconds(
    started_at: float | None, finished_at: float | None, now: float
) -> float | None:
    """Seconds from start to end (to ``now`` while it runs); ``None`` before it started."""
    if started_at is None:
        return None
    return round((finished_at or now) - started_at, 3)


def job_status(job: Job, now: float, *, done: int) -> JobStatus:
    """What ``GET /calc/zpe/jobs/{id}`` answers of a job at time ``now``; ``done``: how
    many of its tasks are done (``JobService.done_task_ids``)."""
    return JobStatus(
        job_id=job.job_id,
        state=job.state,
        engine=job.engine,
        label=job.request.label,
        formula=hill_formula(job.structure.symbols),
        delta=job.request.delta,
        nfree=job.request.nfree,
        temperature=job.request.temperature,
        progress=progress(done, job.total_tasks, len(job.reused_task_ids)),
        natoms=job.structure.natoms,
        mobile_indices=job.structure.mobile_indices,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        elapsed_seconds=elapsed_seconds(job.started_at, job.finished_at, now),
        error=job.error,
        summary=job.summary,
        links=job_links(job.job_id),
    )


def status_json(job: Job, done: int, now: float) -> dict[str, Any]:
    """``job_status`` as the JSON it is answered as (what ``StatusCache`` keeps)."""
    return job_status(job, now, done=done).model_dump(mode="json")


def running_status_json(body: dict[str, Any], done: int, now: float) -> dict[str, Any]:
    """A running job's kept ``status_json`` with ``done`` tasks done at time ``now``."""
    total, reused = body["progress"]["total"], body["progress"]["reused"]
    return {
        **body,
        "progress": progress(done, total, reused).model_dump(mode="json"),
        "elapsed_seconds": elapsed_seconds(body["started_at"], body["finished_at"], now),
    }


IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=200, description="Retry-safe submission key."),
]


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobCreated,
    dependencies=[Depends(require_submission_enabled)],
    responses={
        200: {"model": JobCreated, "description": "An idempotent repeat: the first job"},
        **problem_responses(409, 413, 429),
    },
)
def submit_job(
    body: JobRequest,
    service: ServiceDep,
    owner: OwnerDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobCreated:
    """Submit a pw.x input; answers 201 with the job id (200 for an idempotent repeat);
    429 with ``Retry-After`` while the caller has too many jobs queued or running."""
    check_active_jobs(
        service.store,
        owner,
        settings.max_active_jobs_per_owner,
        settings.active_jobs_retry_after_seconds,
    )
    job, created = service.submit(body, owner=owner, idempotency_key=idempotency_key)
    response.headers["Location"] = f"/calc/zpe/jobs/{job.job_id}"
    if not created:
        response.status_code = 200
    return JobCreated(
        job_id=job.job_id, state=job.state, created=created, links=job_links(job.job_id)
    )


#: Every read route: one polling budget per caller (``poll_limit``), 429 past it.
READ = [Depends(poll_limit)]


@router.get("/jobs", response_model=JobList, responses=problem_responses(429), dependencies=READ)
def list_jobs(
    service: ServiceDep,
    owner: OwnerDep,
    settings: SettingsDep,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    q: Annotated[
        str | None,
        Query(max_length=200, description="Only jobs whose label, formula or id contains this."),
    ] = None,
) -> JobList:
    """The caller's jobs, newest first; pass ``next_cursor`` back as ``cursor``.

    With ``q``, a page may hold fewer than ``limit`` jobs and still have a
    ``next_cursor``: the search reads a bounded number of jobs per request."""
    if cursor is not None and not all(c.isalnum() or c == "-" for c in cursor):
        raise InputError("cursor is malformed; use the next_cursor of a previous page")
    limit = min(limit, settings.list_page_max)
    if q and q.strip():
        jobs, next_cursor = service.search_jobs(owner, q.strip(), cursor=cursor, limit=limit)
    else:
        jobs, next_cursor = service.store.list_jobs(owner, cursor=cursor, limit=limit)
    t = now()
    return JobList(
        jobs=[job_status(job, t, done=len(service.done_task_ids(job))) for job in jobs],
        next_cursor=next_cursor,
    )


@router.get(
    "/jobs/{job_id}",
    response_model=JobStatus,
    responses={
        304: {"description": "Not modified since the ETag given in If-None-Match"},
        **problem_responses(404, 429),
    },
)
async def get_job(
    job_id: str,
    request: Request,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    """Status and progress. ``ETag`` + ``If-None-Match`` answer 304 while nothing changed;
    ``Retry-After`` says when to poll again while the job runs."""
    # The poll limit and the owner are called, not declared as dependencies: FastAPI's
    # solving of each dependency cost more than the rest of the poll (bench/polling_load.py).
    owner = await polling_owner(request)
    statuses = status_cache(request)
    # Progress is not on the job's record while it runs (done markers): the tag moves with
    # the record's revision and with the count of done tasks, which only grows. Neither
    # needs the record parsed (``StatusCache``).
    if statuses.service.store.local_reads:  # microseconds: cheaper than a thread-pool hop
        poll = statuses.poll(job_id, owner=owner)
    else:
        poll = await run_in_threadpool(statuses.poll, job_id, owner=owner)
    etag = poll.etag
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if not poll.snapshot.terminal:
        headers["Retry-After"] = str(get_app_settings(request).poll_retry_after_seconds)
    if if_none_match is not None and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(
        poll.content(running_status_json, now()), media_type="application/json", headers=headers
    )


@router.get(
    "/jobs/{job_id}/tasks",
    response_model=TaskStates,
    responses=problem_responses(404, 429),
    dependencies=READ,
)
def get_task_states(job_id: str, service: ServiceDep, owner: OwnerDep) -> TaskStates:
    """How many of the job's tasks are in each state (costlier than the status)."""
    job, _ = service.get_job(job_id, owner=owner)
    return TaskStates(job_id=job_id, states=service.task_states(job))


@router.get("/jobs/{job_id}/result", responses=problem_responses(404, 409, 429), dependencies=READ)
def get_result(job_id: str, service: ServiceDep, owner: OwnerDep) -> dict[str, Any]:
    """The result document; 409 until the job is done."""
    return service.get_result(job_id, owner=owner)


@router.get("/jobs/{job_id}/files", responses=problem_responses(404, 409, 429), dependencies=READ)
def get_file(
    job_id: str,
    service: ServiceDep,
    owner: OwnerDep,
    kind: Annotated[
        str,
        Query(description="summary | freqs | result | thermo | vibrations | modes | input"),
    ] = "summary",
) -> Response:
    """``summary`` (text), ``freqs`` (CSV), ``result`` (JSON), ``thermo`` (CSV: T, H or U,
    S, G or F), ``vibrations`` (ASE's ``VibrationsData`` JSON: ``VibrationsData.read``) or
    ``modes`` (extended XYZ, an animation of every mode), 409 until done; ``input`` (the
    submitted pw.x input, verbatim) in any state."""
    data = service.get_file(job_id, kind, owner=owner)
    filename = ARTIFACT_NAMES.get(kind, "input.pwi")
    return Response(
        content=data,
        media_type=ARTIFACT_MEDIA_TYPES.get(kind, "text/plain; charset=utf-8"),
        headers={"Content-Disposition": f'attachment; filename="{job_id}-{filename}"'},
    )


@router.post(
    "/jobs/{job_id}/cancel", response_model=JobStatus, responses=problem_responses(404, 409)
)
def cancel_job(job_id: str, service: ServiceDep, owner: OwnerDep) -> JobStatus:
    """Cancel a queued or running job; 409 if it already ended."""
    job = service.cancel(job_id, owner=owner)
    return job_status(job, now(), done=len(service.done_task_ids(job)))
