"""The worker API (``/calc/zpe/compute``): enrollment, servers, leases and task outcomes.

Compute servers behind NAT call out to these endpoints over HTTPS with a
worker token; they never see the store. The store work is blocking, so it
runs in the thread pool; the lease long-poll waits asynchronously.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool

from zpe_api.deps import (
    AdminDep,
    CoordinatorDep,
    EnrollTokenDep,
    RegistryDep,
    SettingsDep,
    WorkerDep,
)
from zpe_client.compute import (
    BatchAnswer,
    EnrollTokenIssued,
    EnrollTokenRequest,
    FailureReport,
    HeartbeatAnswer,
    HeartbeatBatch,
    ItemAnswer,
    LeaseBatch,
    LeaseBatchRequest,
    LeaseGranted,
    LeaseRef,
    LeaseRequest,
    OutcomeBatch,
    ResultSubmission,
    ServerEnrolled,
    ServerList,
    ServerRegistration,
    ServerView,
    TokenRenewed,
)
from zpe_core.control.compute_servers import ComputeRegistry, ComputeServer
from zpe_core.control.pull import PullCoordinator
from zpe_core.edge.problems import status_for
from zpe_core.errors import (
    Forbidden,
    InputError,
    InputTooLarge,
    NotFound,
    StateConflict,
    Unauthorized,
)
from zpe_core.jobs.models import Task
from zpe_core.observability.metrics import count_pull_leases
from zpe_core.settings import ApiSettings

router = APIRouter(prefix="/calc/zpe/compute", tags=["compute servers"])
#: The result route, whose body cap is ``ZPE_MAX_RESULT_BYTES`` (checked by ``BodyLimit``
#: on the stream, before the result is parsed).
RESULT_PATH = re.compile(r"/calc/zpe/compute/tasks/[^/]+/result")
DENSITY_PATH = re.compile(r"/calc/zpe/compute/tasks/[^/]+/reference-density")
#: The batched outcomes route, whose body cap is ``ZPE_MAX_RESULT_BYTES`` per allowed item.
OUTCOMES_PATH = re.compile(r"/calc/zpe/compute/tasks/outcomes")


def server_view(server: ComputeServer, running: dict[str, int]) -> ServerView:
    """A compute server as admins see it: its record without token digests."""
    shown = server.model_dump(include=set(ServerView.model_fields))  # never the token digests
    return ServerView(**shown, revoked=server.revoked, running=running)


#: How often a waiting lease request looks at the queue again.
POLL_INTERVAL_SECONDS = 0.5

EventIdHeader = Annotated[
    str | None, Header(alias="X-Event-Id", max_length=100, description="Or body event_id.")
]


# ---------------------------------------------------------------------- enrollment


@router.post("/enroll-tokens", status_code=201, response_model=EnrollTokenIssued)
def create_enroll_token(
    body: EnrollTokenRequest, actor: AdminDep, registry: RegistryDep
) -> EnrollTokenIssued:
    """Admin: a short-lived, single-use enroll token (only its digest is stored)."""
    token, record = registry.issue_enroll_token(
        targets=body.targets, ttl_seconds=body.ttl_seconds, note=body.note, actor=actor
    )
    return EnrollTokenIssued(
        token=token, token_id=record.token_id, targets=record.targets, expires_at=record.expires_at
    )


@router.post("/servers", status_code=201, response_model=ServerEnrolled)
def enroll_server(
    body: ServerRegistration, token: EnrollTokenDep, registry: RegistryDep
) -> ServerEnrolled:
    """Register a compute server with an enroll token (as the bearer); returns a worker token."""
    if token is None:
        raise Unauthorized(
            "an enroll token is required as the bearer", code="enroll_token_required"
        )
    server, worker_token = registry.enroll(
        token,
        name=body.name,
        labels=body.labels,
        targets=body.targets,
        capabilities=body.capabilities,
    )
    return ServerEnrolled(
        server_id=server.server_id,
        worker_token=worker_token,
        token_expires_at=server.token_expires_at,
        targets=server.targets,
    )


@router.get("/servers", response_model=ServerList)
def list_servers(_: AdminDep, registry: RegistryDep, coordinator: CoordinatorDep) -> ServerList:
    """Admin: every server, with last-seen time and the leases it holds now."""
    return ServerList(
        servers=[
            server_view(server, coordinator.live_leases(server))
            for server in registry.list_servers()
        ]
    )


@router.get("/servers/{server_id}", response_model=ServerView)
def get_server(
    server_id: str, _: AdminDep, registry: RegistryDep, coordinator: CoordinatorDep
) -> ServerView:
    """Admin: one server."""
    server = registry.get_server(server_id)
    return server_view(server, coordinator.live_leases(server))


@router.delete("/servers/{server_id}", response_model=ServerView)
def revoke_server(server_id: str, actor: AdminDep, coordinator: CoordinatorDep) -> ServerView:
    """Admin: revoke a server at once; the tasks it held go back to the queue."""
    server = coordinator.revoke_server(server_id, actor=actor)
    return server_view(server, {})


@router.post("/servers/{server_id}/token", response_model=TokenRenewed)
def renew_token(server_id: str, server: WorkerDep, registry: RegistryDep) -> TokenRenewed:
    """A server renews its own worker token before it expires (the old one stops soon)."""
    if server_id != server.server_id:
        raise Forbidden("a server can renew only its own token", code="not_your_server")
    renewed, token = registry.renew_token(server.server_id)
    return TokenRenewed(
        server_id=renewed.server_id, worker_token=token, token_expires_at=renewed.token_expires_at
    )


# ---------------------------------------------------------------------- leases


def _granted(task: Task, settings: ApiSettings) -> LeaseGranted:
    assert task.lease is not None
    return LeaseGranted(
        task_id=task.task_id,
        lease_id=task.lease.lease_id,
        epoch=task.lease.epoch,
        expires_at=task.lease.expires_at,
        lease_seconds=settings.lease_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        spec=task.spec,
        job_ids=task.subscribers,
    )


async def _long_poll(
    body: LeaseRequest,
    request: Request,
    server: ComputeServer,
    registry: ComputeRegistry,
    coordinator: PullCoordinator,
    settings: ApiSettings,
    limit: int,
) -> list[Task]:
    """Lease up to ``limit`` tasks, waiting up to ``ZPE_LEASE_POLL_MAX_SECONDS`` for one."""
    if body.capabilities is not None:
        server = server.model_copy(update={"capabilities": body.capabilities})
    await run_in_threadpool(registry.touch, server.server_id, body.capabilities)
    deadline = time.monotonic() + min(body.wait_seconds, settings.lease_poll_max_seconds)
    while True:
        if await request.is_disconnected():
            return []
        tasks = await run_in_threadpool(coordinator.lease_many, server, limit)
        if tasks:
            return tasks
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return []
        await asyncio.sleep(min(POLL_INTERVAL_SECONDS, remaining))


@router.post(
    "/tasks/lease",
    response_model=LeaseGranted,
    responses={204: {"description": "No task for this server now (or dequeue is switched off)"}},
)
async def lease_task(
    body: LeaseRequest,
    request: Request,
    server: WorkerDep,
    registry: RegistryDep,
    coordinator: CoordinatorDep,
    settings: SettingsDep,
) -> Response:
    """Long-poll (up to ``ZPE_LEASE_POLL_MAX_SECONDS``) for one task this server matches."""
    tasks = await _long_poll(body, request, server, registry, coordinator, settings, 1)
    if not tasks:
        return Response(status_code=204)
    count_pull_leases("lease", 1)
    granted = _granted(tasks[0], settings)
    return Response(granted.model_dump_json(), media_type="application/json")


@router.post(
    "/tasks/leases",
    response_model=LeaseBatch,
    responses={204: {"description": "No task for this server now (or dequeue is switched off)"}},
)
async def lease_tasks(
    body: LeaseBatchRequest,
    request: Request,
    server: WorkerDep,
    registry: RegistryDep,
    coordinator: CoordinatorDep,
    settings: SettingsDep,
) -> Response:
    """Long-poll for tasks this server matches and lease up to ``max_tasks`` of them at
    once (its free slots), each under its own lease; 422 ``batch_too_large`` beyond
    ``ZPE_PULL_BATCH_MAX``."""
    coordinator.check_batch(body.max_tasks, "tasks asked for")
    tasks = await _long_poll(body, request, server, registry, coordinator, settings, body.max_tasks)
    if not tasks:
        return Response(status_code=204)
    count_pull_leases("leases", len(tasks))
    batch = LeaseBatch(
        leases=[_granted(task, settings) for task in tasks], batch_max=settings.pull_batch_max
    )
    return Response(batch.model_dump_json(), media_type="application/json")


@router.post("/tasks/{task_id}/heartbeat", response_model=HeartbeatAnswer)
def heartbeat(
    task_id: str, body: LeaseRef, server: WorkerDep, coordinator: CoordinatorDep
) -> HeartbeatAnswer:
    """Extend the lease; 409 if this server no longer holds it at this epoch."""
    task = coordinator.heartbeat(server, task_id, body.epoch, body.lease_id)
    assert task.lease is not None
    return HeartbeatAnswer(
        task_id=task_id, epoch=task.lease.epoch, expires_at=task.lease.expires_at
    )


def _each(task_id: str, act: Callable[[], dict[str, object]]) -> ItemAnswer:
    """One item of a batch, answered as its single-task route would be. Only what refuses
    this item (stale lease, invalid result, unknown task) stays in the item; a store
    outage fails the whole request (503), and a retry replays the answered items."""
    try:
        return ItemAnswer(task_id=task_id, status=200, answer=act())
    except (InputError, NotFound, StateConflict) as exc:
        return ItemAnswer(
            task_id=task_id, status=status_for(exc), code=exc.code, detail=exc.message
        )


@router.post("/tasks/heartbeats", response_model=BatchAnswer)
def heartbeats(body: HeartbeatBatch, server: WorkerDep, coordinator: CoordinatorDep) -> BatchAnswer:
    """Extend several leases, each checked on its own (an item is 409 if this server no
    longer holds it at that epoch); 422 ``batch_too_large`` beyond ``ZPE_PULL_BATCH_MAX``."""
    coordinator.check_batch(len(body.leases), "leases")

    def beat(task_id: str, epoch: int, lease_id: str) -> dict[str, object]:
        task = coordinator.heartbeat(server, task_id, epoch, lease_id)
        assert task.lease is not None
        return {"epoch": task.lease.epoch, "expires_at": task.lease.expires_at}

    return BatchAnswer(
        items=[
            _each(ref.task_id, partial(beat, ref.task_id, ref.epoch, ref.lease_id))
            for ref in body.leases
        ]
    )


@router.post("/tasks/{task_id}/release")
def release(
    task_id: str, body: LeaseRef, server: WorkerDep, coordinator: CoordinatorDep
) -> dict[str, str]:
    """Give the lease back without counting an attempt (the worker is shutting down)."""
    task = coordinator.release(server, task_id, body.epoch, body.lease_id)
    return {"task_id": task_id, "state": task.state.value}


LeaseEpochHeader = Annotated[int, Header(alias="X-Lease-Epoch", ge=1)]
LeaseIdHeader = Annotated[str, Header(alias="X-Lease-Id", min_length=1, max_length=64)]
_DENSITY_MEDIA_TYPE = "application/octet-stream"


@router.get(
    "/tasks/{task_id}/reference-density",
    response_class=Response,
    responses={200: {"content": {_DENSITY_MEDIA_TYPE: {}}, "description": "Packed density"}},
)
def get_reference_density(
    task_id: str,
    server: WorkerDep,
    coordinator: CoordinatorDep,
    epoch: LeaseEpochHeader,
    lease_id: LeaseIdHeader,
) -> Response:
    """The converged density of the reference point of the task this server holds (to
    start its SCF warm); 404 if none was shipped; 409 if the lease is not current."""
    blob = coordinator.reference_density(server, task_id, epoch, lease_id)
    if blob is None:
        raise NotFound("no reference density for this task", code="no_reference_density")
    return Response(blob, media_type=_DENSITY_MEDIA_TYPE)


@router.put("/tasks/{task_id}/reference-density")
async def put_reference_density(
    task_id: str,
    request: Request,
    server: WorkerDep,
    coordinator: CoordinatorDep,
    settings: SettingsDep,
    epoch: LeaseEpochHeader,
    lease_id: LeaseIdHeader,
) -> dict[str, object]:
    """Ship the converged density of a reference task, under its lease, before its result
    (the first one stays); 413 beyond ``ZPE_WARM_START_SHARE_MAX_BYTES``."""
    cap = settings.warm_start_share_max_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise InputTooLarge(
                f"the density is over {cap} bytes; at most {cap} are accepted",
                code="density_too_large",
            )
        chunks.append(chunk)
    blob = b"".join(chunks)
    stored = await run_in_threadpool(
        coordinator.store_reference_density, server, task_id, epoch, lease_id, blob
    )
    return {"task_id": task_id, "stored": stored}


def _event_id(body_value: str | None, header: str | None) -> str:
    if body_value and header and body_value != header:
        raise InputError("event_id and X-Event-Id differ", code="invalid_event_id")
    value = body_value or header
    if not value:
        raise InputError(
            "an event id (X-Event-Id header or event_id) is required", code="event_id_required"
        )
    return value


@router.post("/tasks/{task_id}/result")
async def submit_result(
    task_id: str,
    body: ResultSubmission,
    server: WorkerDep,
    coordinator: CoordinatorDep,
    x_event_id: EventIdHeader = None,
) -> dict[str, object]:
    """Commit energy and forces, validated now (engine, natoms x 3, finite); a body over
    ``ZPE_MAX_RESULT_BYTES`` is refused (413 ``result_too_large``) before it is parsed.

    409 if the lease is stale or another server's; a repeat with the same event
    id is answered the same.
    """
    event_id = _event_id(body.event_id, x_event_id)
    return await run_in_threadpool(
        lambda: coordinator.submit_result(
            server,
            task_id,
            epoch=body.epoch,
            lease_id=body.lease_id,
            result=body.result.to_result(),
            event_id=event_id,
        )
    )


@router.post("/tasks/{task_id}/failed")
def report_failure(
    task_id: str,
    body: FailureReport,
    server: WorkerDep,
    coordinator: CoordinatorDep,
    x_event_id: EventIdHeader = None,
) -> dict[str, object]:
    """A failed attempt: ``retryable`` re-queues with backoff (until ``ZPE_RETRY_MAX``);
    otherwise the task is dead-lettered and its jobs fail with the reason."""
    return coordinator.report_failure(
        server,
        task_id,
        epoch=body.epoch,
        lease_id=body.lease_id,
        retryable=body.retryable,
        code=body.code,
        reason=body.reason,
        detail=body.detail,
        event_id=_event_id(body.event_id, x_event_id),
    )


@router.post("/tasks/outcomes", response_model=BatchAnswer)
def report_outcomes(
    body: OutcomeBatch, server: WorkerDep, coordinator: CoordinatorDep
) -> BatchAnswer:
    """Results and failures of several tasks in one request, in order. Each item carries
    its own lease and event id and is answered as ``/result`` or ``/failed`` would answer
    it (a repeat replays the recorded answer); 422 ``batch_too_large`` beyond
    ``ZPE_PULL_BATCH_MAX``; the body cap is ``ZPE_MAX_RESULT_BYTES`` per allowed item."""
    coordinator.check_batch(len(body.outcomes), "outcomes")
    items: list[ItemAnswer] = []
    for item in body.outcomes:
        result, failure = item.result, item.failure
        if result is not None:
            act = partial(
                coordinator.submit_result,
                server,
                item.task_id,
                epoch=item.epoch,
                lease_id=item.lease_id,
                result=result.to_result(),
                event_id=item.event_id,
            )
        else:
            assert failure is not None
            act = partial(
                coordinator.report_failure,
                server,
                item.task_id,
                epoch=item.epoch,
                lease_id=item.lease_id,
                retryable=failure.retryable,
                code=failure.code,
                reason=failure.reason,
                detail=failure.detail,
                event_id=item.event_id,
            )
        items.append(_each(item.task_id, act))
    return BatchAnswer(items=items)
