"""The worker service: the push target of Cloud Tasks (and nothing a user can call).

``POST /internal/tasks/run`` with ``{"task_id": ...}`` runs that task *inside
the request* (in a thread, so the event loop stays free) and answers only
when the outcome is settled, because Cloud Run throttles the CPU of an
instance that has answered and may recycle it:

* 200: the result is committed, the task was already done or settled, someone
  else holds its lease, or it failed for good and that is recorded (dead
  letter, jobs failed with the reason). Cloud Tasks deletes the task.
* 503: a retryable failure (recorded in the store) or the store is unreachable,
  or the worker is shutting down: Cloud Tasks delivers again later.
* 401/403: the request is not authenticated; nothing runs.

``X-CloudTasks-TaskRetryCount`` tells which delivery this is; on the last one
(``ZPE_TASKS_MAX_ATTEMPTS``) a retryable failure is recorded as final, since
Cloud Tasks deletes exhausted tasks. On SIGTERM the worker answers 503 to new
requests, lets running tasks finish for ``ZPE_WORKER_SHUTDOWN_GRACE_SECONDS``
and then releases the leases of those still running, so another instance can
take them at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zpe_client.models import TaskState
from zpe_core import __version__
from zpe_core.bootstrap import worker_service
from zpe_core.edge.body_limit import BodyLimit
from zpe_core.edge.problems import PROBLEM_JSON, problem_body, problem_headers
from zpe_core.errors import (
    STORE_UNAVAILABLE_REASON,
    NotFound,
    PushAuthError,
    StateConflict,
    StoreUnavailable,
    ZpeError,
)
from zpe_core.jobs.models import Task
from zpe_core.jobs.runner import Outcome, run_task
from zpe_core.jobs.service import JobService
from zpe_core.observability.logs import REQUEST_ID_HEADER, log_context, valid_request_id
from zpe_core.settings import PushWorkerSettings
from zpe_worker.auth import PushAuthenticator

log = logging.getLogger("zpe.worker")

RETRY_COUNT_HEADER = "x-cloudtasks-taskretrycount"
TASK_NAME_HEADER = "x-cloudtasks-taskname"
MAX_BODY_BYTES = 4096
T = TypeVar("T")


class RunRequest(BaseModel):
    """The body Cloud Tasks delivers."""

    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")


def _problem(status: int, code: str, detail: str, **extra: Any) -> JSONResponse:
    """Problem details, built (and redacted) like every answer of the API."""
    body = problem_body(status, code, code.replace("_", " "), detail, **extra)
    headers = problem_headers({"Retry-After": "5"} if status == 503 else None)
    return JSONResponse(body, status, media_type=PROBLEM_JSON, headers=headers)


class InFlight:
    """Leases held by running requests, so a shutdown can release them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: dict[str, int] = {}

    def add(self, task: Task) -> None:
        assert task.lease is not None
        with self._lock:
            self._leases[task.task_id] = task.lease.epoch

    def remove(self, task_id: str) -> None:
        with self._lock:
            self._leases.pop(task_id, None)

    def drain(self) -> dict[str, int]:
        with self._lock:
            leases, self._leases = self._leases, {}
        return leases


def _in_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run ``fn`` in a daemon thread (a shutdown does not wait for it past the grace)."""
    future: Future[T] = Future()

    def target() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=target, name="zpe-push-task", daemon=True).start()
    return asyncio.wrap_future(future)


def create_app(settings: PushWorkerSettings | None = None) -> FastAPI:
    """Build the worker app for ``settings`` (default: from the environment)."""
    settings = settings or PushWorkerSettings()
    authenticator = PushAuthenticator(settings)  # refuses to start without a way to authenticate
    worker_id = f"push-{socket.gethostname()}-{os.getpid()}"
    in_flight = InFlight()
    draining = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = worker_service(settings)
        store = service.store
        app.state.service = service
        log.info("worker started", extra={"worker_id": worker_id, "auth": _auth_modes()})
        try:
            yield
        finally:
            draining.set()
            # Requests still running after the graceful-shutdown timeout: give their
            # leases back so another instance can run the tasks now, not at expiry.
            for task_id, epoch in in_flight.drain().items():
                try:
                    store.release_task(task_id, epoch)
                    log.warning(
                        "released the lease of an unfinished task at shutdown",
                        extra={"task_id": task_id, "worker_id": worker_id, "epoch": epoch},
                    )
                except (StateConflict, ZpeError) as exc:
                    log.warning(
                        "could not release a lease at shutdown",
                        extra={"task_id": task_id, "error": str(exc)},
                    )
            store.close()

    def _auth_modes() -> list[str]:
        modes = ["oidc"] if authenticator.oidc_enabled else []
        return modes + (["shared-secret"] if settings.push_shared_secret else [])

    app = FastAPI(
        title="ZPE worker",
        version=__version__,
        description="Compute plane: runs one displacement task per push request.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.draining = draining
    app.state.in_flight = in_flight
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)  # chunked bodies too, before auth

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "draining" if draining.is_set() else "ok"}

    @app.post("/internal/tasks/run")
    async def run(request: Request) -> JSONResponse:
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            peer = request.client.host if request.client else None
            caller = await asyncio.to_thread(authenticator.authenticate, headers, peer)
        except PushAuthError as exc:
            log.warning("push request refused", extra={"code": exc.code, "status": exc.status})
            return _problem(exc.status, exc.code, exc.message)
        if draining.is_set():
            return _problem(503, "worker_draining", "this instance is shutting down")
        raw = await request.body()  # at most MAX_BODY_BYTES: BodyLimit cut the stream there
        try:
            body = RunRequest.model_validate_json(raw)
        except ValidationError as exc:
            return _problem(400, "invalid_body", exc.errors(include_url=False)[0]["msg"])
        try:
            retry_count = max(0, int(headers.get(RETRY_COUNT_HEADER, "0")))
        except ValueError:
            retry_count = 0
        final = retry_count + 1 >= settings.tasks_max_attempts
        service: JobService = request.app.state.service
        extra = {
            "task_id": body.task_id,
            "worker_id": worker_id,
            "delivery": retry_count + 1,
            "final_attempt": final,
            "cloud_task": headers.get(TASK_NAME_HEADER),
            "caller": caller,
        }

        request_id = valid_request_id(headers.get(REQUEST_ID_HEADER.lower()))
        if request_id:
            extra["request_id"] = request_id

        def execute() -> Outcome | str:
            try:
                with log_context(request_id=request_id):
                    return _deliver(service, body.task_id, worker_id, final, in_flight)
            finally:
                # Only once the task's thread is done: a request cancelled at shutdown
                # leaves its lease listed, and the shutdown releases it.
                in_flight.remove(body.task_id)

        try:
            outcome = await _in_thread(execute)
        except StoreUnavailable as exc:  # the reason (paths, bucket, host) goes to the log only
            log.warning(
                "task delivery failed", extra={**extra, "code": exc.code, "error": exc.message}
            )
            return _problem(503, exc.code, STORE_UNAVAILABLE_REASON)
        except ZpeError as exc:
            log.warning("task delivery failed", extra={**extra, "code": exc.code})
            return _problem(503, exc.code, exc.message)
        except Exception as exc:
            log.exception("task delivery crashed", extra=extra)
            return _problem(503, "worker_error", f"{type(exc).__name__} in the worker")
        log.info("task delivery handled", extra={**extra, "outcome": str(outcome)})
        if outcome == Outcome.RETRY:
            return _problem(503, "task_retry", "the task failed and will be retried")
        return JSONResponse({"task_id": body.task_id, "outcome": str(outcome)})

    return app


def _deliver(
    service: JobService, task_id: str, worker_id: str, final: bool, in_flight: InFlight
) -> Outcome | str:
    """One delivery: settle what is settled, else run the task. Returns the outcome."""
    found = service.store.get_task(task_id)
    if found is None:
        return "unknown_task"
    task = found.value
    # Repeat deliveries of settled tasks also repair a half-finished earlier one
    # (result committed, jobs not yet advanced): both calls are idempotent.
    if task.state is TaskState.DONE:
        service.task_succeeded(task)
        return "already_done"
    if task.state is TaskState.FAILED:
        service.task_failed(task)
        return "already_failed"
    if task.state is TaskState.CANCELLED:
        return "cancelled"
    try:
        return run_task(
            service,
            task_id,
            worker_id,
            final_attempt=final,
            ignore_ready_at=True,  # the queue owns the schedule; a delivery means "now"
            on_claim=in_flight.add,
        )
    except NotFound:
        return "unknown_task"
