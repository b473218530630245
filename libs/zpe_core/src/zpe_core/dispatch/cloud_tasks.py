"""``cloud-tasks``: one Google Cloud Tasks HTTP push task per unit of work.

Each task POSTs ``{"task_id": ...}`` to the worker service's
``/internal/tasks/run`` with an OIDC token of the invoker service account
(or, next to the local emulator only, the shared-secret header: see
``check_push_secret``). Task names
are deterministic, ``<task_id>-<attempts>-<epoch>``: a re-dispatch of the
same queued task (a second job wanting it, a restart, a reconciler round) is
de-duplicated by Cloud Tasks (``AlreadyExists`` counts as success), while a
task re-queued after a failed or expired attempt gets a new name.

Transient API errors are retried with exponential backoff and jitter; after
that ``DispatchError`` is raised and the jobs fail with the reason. The
dispatcher lists the tasks its queue holds (``enqueued_task_ids``): the
control plane's reaper re-dispatches tasks left queued longer than
``ZPE_REDISPATCH_AFTER_SECONDS`` that have no Cloud Task any more (exhausted
retries that never reached the worker, a dispatch lost in a crash) through the
retry rule of ``zpe_core.jobs.transitions`` (an attempt counted, scheduled after
the backoff, a dead letter after ``ZPE_RETRY_MAX``), so that nothing waits
forever (``zpe_core.jobs.repair``).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from zpe_core.dispatch.base import JobDispatcher
from zpe_core.edge.hosts import is_loopback
from zpe_core.errors import ConfigurationError, DispatchError
from zpe_core.jobs.models import Task, now
from zpe_core.observability.logs import REQUEST_ID_HEADER, current_request_id
from zpe_core.settings import ApiSettings, PushSettings

log = logging.getLogger("zpe.dispatch.cloud_tasks")

RUN_PATH = "/internal/tasks/run"
SECRET_HEADER = "X-ZPE-Push-Secret"
_QUEUE_RE = re.compile(r"^projects/[^/]+/locations/[^/]+/queues/[A-Za-z0-9-]+$")
_MAX_DISPATCH_DEADLINE = 1800.0  # Cloud Tasks' limit for HTTP targets


def check_push_secret(settings: PushSettings) -> None:
    """``ZPE_PUSH_SHARED_SECRET`` belongs next to the local Cloud Tasks emulator only.

    The emulator sends no OIDC token, so there the secret stands in for it. Anywhere
    else it would be a second, weaker way in (one static value that never expires),
    so a secret without ``ZPE_TASKS_EMULATOR_HOST`` on a loopback address is refused
    at start (by the API's dispatcher and by the worker service alike).
    """
    if settings.push_shared_secret is None:
        return
    emulator = settings.tasks_emulator_host
    if emulator is None or not is_loopback(emulator):
        raise ConfigurationError(
            "ZPE_PUSH_SHARED_SECRET is only for the local Cloud Tasks emulator: it needs "
            "ZPE_TASKS_EMULATOR_HOST on a loopback address (127.0.0.1:PORT), got "
            f"{emulator!r}; real Cloud Tasks authenticates with OIDC (ZPE_WORKER_AUDIENCE, "
            "ZPE_TASKS_INVOKER_EMAIL), so unset the secret",
            code="invalid_setting",
        )


def validate_settings(settings: ApiSettings) -> None:
    """Refuse to start in cloud-tasks mode without what it needs; name the missing setting."""
    check_push_secret(settings)
    missing: list[str] = []
    if not settings.tasks_queue:
        missing.append("ZPE_TASKS_QUEUE (projects/P/locations/L/queues/Q)")
    if not settings.worker_url:
        missing.append("ZPE_WORKER_URL (the worker service's base URL)")
    if settings.tasks_emulator_host is None:
        # Real Cloud Tasks: push requests carry an OIDC token the worker verifies.
        if not settings.worker_audience:
            missing.append("ZPE_WORKER_AUDIENCE (the OIDC audience the worker expects)")
        if not settings.tasks_invoker_email:
            missing.append("ZPE_TASKS_INVOKER_EMAIL (the service account that invokes the worker)")
    elif settings.push_shared_secret is None and not settings.tasks_invoker_email:
        missing.append("ZPE_PUSH_SHARED_SECRET (the emulator sends no OIDC token)")
    if missing:
        raise ConfigurationError(
            "ZPE_EXECUTION_MODE=cloud-tasks needs " + "; ".join(missing),
            code="missing_setting",
        )
    assert settings.tasks_queue is not None and settings.worker_url is not None
    if not _QUEUE_RE.match(settings.tasks_queue):
        raise ConfigurationError(
            f"ZPE_TASKS_QUEUE={settings.tasks_queue!r} is not a queue path "
            "(projects/P/locations/L/queues/Q)",
            code="invalid_setting",
        )
    if not settings.worker_url.startswith(("https://", "http://")):
        raise ConfigurationError(
            f"ZPE_WORKER_URL={settings.worker_url!r} must be an http(s) URL",
            code="invalid_setting",
        )


def build_client(settings: PushSettings) -> Any:
    """A ``CloudTasksClient``: insecure gRPC to the emulator, else default credentials."""
    from google.cloud import tasks_v2

    if settings.tasks_emulator_host:
        import grpc  # type: ignore[import-untyped]
        from google.cloud.tasks_v2.services.cloud_tasks.transports import (
            CloudTasksGrpcTransport,
        )

        channel = grpc.insecure_channel(settings.tasks_emulator_host)
        return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    return tasks_v2.CloudTasksClient()


def task_name(task: Task) -> str:
    """The Cloud Tasks task id of one dispatch of ``task``: same state, same name."""
    return f"{task.task_id}-{task.attempts}-{task.epoch}"


def task_id_of(cloud_task_name: str) -> str:
    """The store task id in a Cloud Tasks task name (inverse of :func:`task_name`)."""
    return cloud_task_name.rsplit("/", 1)[-1].rsplit("-", 2)[0]


def _is_transient(exc: Exception) -> bool:
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    return isinstance(
        exc,
        gexc.ServiceUnavailable
        | gexc.DeadlineExceeded
        | gexc.InternalServerError
        | gexc.TooManyRequests
        | gexc.Aborted
        | gexc.Unknown
        | gexc.RetryError
        | auth_exc.TransportError
        | ConnectionError
        | TimeoutError,
    )


class CloudTasksDispatcher(JobDispatcher):
    """Enqueues one HTTP push task per task; reconciles tasks that lost theirs."""

    name = "cloud-tasks"
    tracks_deliveries = True

    def __init__(
        self,
        settings: ApiSettings,
        *,
        client: Any = None,
        attempts: int = 4,
        backoff_seconds: float = 0.25,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        validate_settings(settings)
        assert settings.tasks_queue is not None and settings.worker_url is not None
        self.settings = settings
        self.queue = settings.tasks_queue
        self.url = settings.worker_url.rstrip("/") + RUN_PATH
        self._client = client if client is not None else build_client(settings)
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._sleep = sleep

    # ------------------------------------------------------------------ dispatch

    def build_request(self, task: Task) -> dict[str, Any]:
        """The ``CreateTask`` request for one dispatch of ``task``."""
        from google.cloud import tasks_v2

        headers = {"Content-Type": "application/json"}
        # Only towards the emulator (check_push_secret refused the secret anywhere else;
        # this test keeps it so should that check ever move).
        if self.settings.push_shared_secret is not None and self.settings.tasks_emulator_host:
            headers[SECRET_HEADER] = self.settings.push_shared_secret.get_secret_value()
        request_id = current_request_id()
        if request_id:  # the submitting request, for the worker's logs
            headers[REQUEST_ID_HEADER] = request_id
        http_request: dict[str, Any] = {
            "http_method": tasks_v2.HttpMethod.POST,
            "url": self.url,
            "headers": headers,
            "body": json.dumps({"task_id": task.task_id}).encode(),
        }
        if self.settings.tasks_invoker_email:
            http_request["oidc_token"] = {
                "service_account_email": self.settings.tasks_invoker_email,
                "audience": self.settings.worker_audience or self.settings.worker_url,
            }
        deadline = min(_MAX_DISPATCH_DEADLINE, max(15.0, self.settings.task_timeout_seconds + 60))
        cloud_task: dict[str, Any] = {
            "name": f"{self.queue}/tasks/{task_name(task)}",
            "http_request": http_request,
            "dispatch_deadline": timedelta(seconds=deadline),
        }
        if task.ready_at > now():
            cloud_task["schedule_time"] = datetime.fromtimestamp(task.ready_at, tz=UTC)
        return {"parent": self.queue, "task": cloud_task}

    def dispatch(self, tasks: Sequence[Task]) -> None:
        if not tasks:
            return
        if len(tasks) == 1:
            self._create(tasks[0])
            return
        with ThreadPoolExecutor(max_workers=min(8, len(tasks))) as pool:
            errors = [exc for exc in pool.map(self._create_or_error, tasks) if exc is not None]
        if errors:
            raise DispatchError(
                f"{len(errors)} of {len(tasks)} task(s) could not be enqueued: {errors[0].message}",
                detail=errors[0].detail,
            )

    def _create_or_error(self, task: Task) -> DispatchError | None:
        try:
            self._create(task)
        except DispatchError as exc:
            return exc
        return None

    def _create(self, task: Task) -> None:
        from google.api_core import exceptions as gexc

        request = self.build_request(task)
        extra = {"task_id": task.task_id, "cloud_task": task_name(task)}
        for attempt in range(1, self._attempts + 1):
            try:
                self._client.create_task(request=request, timeout=10.0)
                log.info("task enqueued", extra=extra)
                return
            except gexc.AlreadyExists:
                log.info("task already enqueued (de-duplicated by name)", extra=extra)
                return
            except Exception as exc:
                if not _is_transient(exc):
                    raise DispatchError(
                        f"Cloud Tasks refused the task: {type(exc).__name__}: {exc}",
                        detail=f"queue {self.queue}",
                    ) from exc
                if attempt == self._attempts:
                    raise DispatchError(
                        f"Cloud Tasks unavailable after {attempt} attempts: "
                        f"{type(exc).__name__}: {exc}",
                        detail=f"queue {self.queue}",
                    ) from exc
                delay = self._backoff * 2 ** (attempt - 1)
                log.warning(
                    "enqueue failed; retrying",
                    extra={**extra, "attempt": attempt, "error": type(exc).__name__},
                )
                self._sleep(random.uniform(delay / 2, delay))

    # ------------------------------------------------------------------ deliveries

    def enqueued_task_ids(self) -> set[str]:
        """Store task ids that have a Cloud Task in the queue right now."""
        pager = self._client.list_tasks(request={"parent": self.queue, "page_size": 1000})
        return {task_id_of(cloud_task.name) for cloud_task in pager}
