"""The control plane's side of the pull protocol (``http-pull`` mode).

Workers behind NAT lease tasks over HTTPS; everything they ask for goes
through ``PullCoordinator``, which alone touches the store:

* ``lease``: the earliest due queued task whose targets and engine (name and
  version) the server matches, under a fresh epoch; nothing while
  ``dequeue_enabled`` is off; ``lease_many`` up to ``limit`` of them at once
  (each under its own lease and epoch), at most ``ZPE_PULL_BATCH_MAX``;
* ``heartbeat`` / ``submit_result`` / ``report_failure`` / ``release``: only
  by the server holding the lease at that epoch and lease id, else
  ``StaleLease`` (409) and nothing changes;
* results are validated on submission (engine, shape ``natoms x 3``, finite);
* ``submit_result`` and ``report_failure`` are idempotent by event id: the
  answer (or the conflict) is recorded under ``meta/events/<task>/...`` and a
  repeat of the same call is answered the same; the same id with another
  payload is a conflict.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from zpe_client.compute import EVENT_ID_PATTERN
from zpe_client.models import ErrorInfo, ErrorSource, JobState, TaskResult, TaskState
from zpe_core.control.compute_servers import ComputeRegistry, ComputeServer
from zpe_core.errors import (
    AlreadyExists,
    InputError,
    InputTooLarge,
    NotFound,
    StaleLease,
    StateConflict,
    StoreUnavailable,
    ZpeError,
)
from zpe_core.jobs.models import DEFAULT_TARGET, Task, now
from zpe_core.jobs.service import JobService
from zpe_core.physics.plan import is_reference
from zpe_core.store.base import queue_lane

log = logging.getLogger("zpe.pull")

_EVENT_ID = re.compile(EVENT_ID_PATTERN)
#: A recorded event still ``pending`` after this long belongs to a crashed request.
_PENDING_STALE_SECONDS = 60.0
_PENDING_WAIT_SECONDS = 10.0


class EventRecord(BaseModel):
    """The answer to one worker call, kept so a repeat gets the same answer."""

    fingerprint: str
    state: str = "pending"  # pending | answered | conflict
    answer: dict[str, Any] = Field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None
    created_at: float = Field(default_factory=now)


def task_targets(task: Task) -> list[str]:
    return task.targets or [DEFAULT_TARGET]


def server_matches(server: ComputeServer, task: Task) -> bool:
    """Whether ``server`` may run ``task``: a shared target and the exact engine version."""
    if not set(task_targets(task)) & set(server.targets):
        return False
    version = server.capabilities.engines.get(task.spec.engine)
    return version is not None and version == task.spec.engine_version


def server_lanes(server: ComputeServer) -> list[str]:
    """The ready-queue lanes ``server`` serves: each of its targets x each engine version."""
    return [
        queue_lane(target, engine, version)
        for target in server.targets
        for engine, version in server.capabilities.engines.items()
    ]


def validate_result(task: Task, result: TaskResult) -> None:
    """Refuse a result that cannot be the answer to ``task`` (``InputError``, 422)."""
    spec = task.spec
    if result.engine != spec.engine or result.engine_version != spec.engine_version:
        raise InputError(
            f"the task wants {spec.engine} {spec.engine_version}; the result comes from "
            f"{result.engine} {result.engine_version}",
            code="result_engine_mismatch",
        )
    natoms = len(spec.symbols)
    forces = result.forces_ev_per_a
    if len(forces) != natoms or any(len(row) != 3 for row in forces):
        raise InputError(f"forces must be {natoms} x 3 for this task", code="result_shape_mismatch")
    values = [result.energy_ev, result.wall_seconds, *(f for row in forces for f in row)]
    if not all(math.isfinite(v) for v in values):
        raise InputError("energy and forces must be finite numbers", code="result_not_finite")


class PullCoordinator:
    """Leases, heartbeats, results and failures of pull workers, with fencing."""

    def __init__(self, service: JobService, registry: ComputeRegistry) -> None:
        self.service = service
        self.registry = registry
        self.store = service.store
        self.settings = service.settings

    # -------------------------------------------------------------- lease

    def lease(self, server: ComputeServer) -> Task | None:
        """One due task the server matches, leased to it; ``None`` if none (or draining)."""
        if not self.registry.switches().dequeue_enabled:
            return None
        lanes = server_lanes(server)
        if not lanes:
            return None
        for _ in range(20):  # tasks abandoned on the way do not count
            task = self.store.claim_next(
                server.server_id,
                self.settings.lease_seconds,
                lanes=lanes,
                accept=lambda t: server_matches(server, t),
            )
            if task is None:
                return None
            assert task.lease is not None
            jobs = self.service.active_subscribers(task)
            if not jobs:
                self.store.release_task(task.task_id, task.lease.epoch)
                self.service.abandon_if_unwanted(task.task_id)
                continue
            self.registry.note_lease(server.server_id, task.task_id, task.lease.epoch)
            self.service.task_started(task, jobs)
            log.info(
                "task leased",
                extra={
                    "task_id": task.task_id,
                    "worker_id": server.server_id,
                    "epoch": task.lease.epoch,
                },
            )
            return task
        return None

    def check_batch(self, count: int, what: str) -> None:
        """Refuse a request naming more tasks than ``ZPE_PULL_BATCH_MAX`` (422)."""
        cap = self.settings.pull_batch_max
        if count > cap:
            raise InputError(
                f"{count} {what} in one request; at most {cap} are allowed (ZPE_PULL_BATCH_MAX)",
                code="batch_too_large",
            )

    def lease_many(self, server: ComputeServer, limit: int) -> list[Task]:
        """Up to ``limit`` due tasks the server matches, each leased under its own epoch."""
        self.check_batch(limit, "tasks asked for")
        leased: list[Task] = []
        while len(leased) < limit:
            try:
                task = self.lease(server)
            except StoreUnavailable:
                if not leased:
                    raise
                # Hand out what is leased already: failing the request would strand
                # those leases until they expire, each costing an attempt.
                log.warning("store unavailable while leasing a batch", exc_info=True)
                break
            if task is None:
                break
            leased.append(task)
        return leased

    def _held(self, server: ComputeServer, task_id: str, epoch: int, lease_id: str) -> Task:
        """The task if ``server`` holds its lease at ``epoch``/``lease_id``, else ``StaleLease``."""
        found = self.store.get_task(task_id)
        if found is None:
            raise NotFound(f"task {task_id} not found")
        task = found.value
        lease = task.lease
        if (
            task.state is not TaskState.LEASED
            or lease is None
            or lease.epoch != epoch
            or lease.worker_id != server.server_id
            or lease.lease_id != lease_id
        ):
            if lease is not None and lease.worker_id != server.server_id:
                why = "it is leased by another server"
            else:
                why = f"it is {task.state.value} (epoch {task.epoch})"
            raise StaleLease(f"lease epoch {epoch} of task {task_id} is not current: {why}")
        return task

    def heartbeat(self, server: ComputeServer, task_id: str, epoch: int, lease_id: str) -> Task:
        """Extend the server's lease; the epoch check is repeated inside the store's CAS."""
        self._held(server, task_id, epoch, lease_id)
        task = self.store.heartbeat(task_id, epoch, self.settings.lease_seconds)
        self.registry.touch(server.server_id)
        return task

    def release(self, server: ComputeServer, task_id: str, epoch: int, lease_id: str) -> Task:
        """Give the lease back without counting an attempt (worker shutting down)."""
        self._held(server, task_id, epoch, lease_id)
        task = self.store.release_task(task_id, epoch)
        self.registry.note_lease(server.server_id, task_id, None)
        return task

    # -------------------------------------------------------------- results and failures

    def submit_result(
        self,
        server: ComputeServer,
        task_id: str,
        *,
        epoch: int,
        lease_id: str,
        result: TaskResult,
        event_id: str,
    ) -> dict[str, Any]:
        """Validate and commit a result under the server's lease; advance the task's jobs."""
        found = self.store.get_task(task_id)
        if found is None:
            raise NotFound(f"task {task_id} not found")
        validate_result(found.value, result)
        result = result.model_copy(update={"worker_id": server.server_id})
        payload = {"kind": "result", "epoch": epoch, "lease_id": lease_id}
        payload["result"] = result.model_dump(mode="json")

        def act() -> dict[str, Any]:
            current = self.store.get_task(task_id)
            if current is not None and _committed_by(current.value, server, epoch):
                # A retry after an outage cut the first call between committing and
                # advancing the jobs: advance them now (idempotent), commit nothing.
                self.service.task_succeeded(current.value)
                return {"task_id": task_id, "state": "done", "committed": False}
            self._held(server, task_id, epoch, lease_id)
            task, committed = self.store.commit_result(task_id, epoch, result)
            self.registry.count_outcome(server.server_id, task_id, done=True)
            if committed:
                log.info(
                    "task committed",
                    extra={"task_id": task_id, "worker_id": server.server_id, "epoch": epoch},
                )
                self.service.task_succeeded(task, marked=True)
            return {"task_id": task_id, "state": task.state.value, "committed": committed}

        return self._once(server, task_id, event_id, payload, act)

    def report_failure(
        self,
        server: ComputeServer,
        task_id: str,
        *,
        epoch: int,
        lease_id: str,
        retryable: bool,
        code: str,
        reason: str,
        detail: str | None,
        event_id: str,
    ) -> dict[str, Any]:
        """Record a failed attempt: re-queue with backoff, or dead-letter and fail its jobs."""
        payload = {
            "kind": "failed",
            "epoch": epoch,
            "lease_id": lease_id,
            "retryable": retryable,
            "code": code,
            "reason": reason,
            "detail": detail,
        }

        def act() -> dict[str, Any]:
            self._held(server, task_id, epoch, lease_id)
            error = ErrorInfo(
                code=code,
                message=reason,
                source=ErrorSource.COMPUTE,
                detail=detail,
                retryable=retryable,
            )
            task = self.store.fail_task(
                task_id, epoch, error, retryable=retryable, policy=self.settings.retry_policy
            )
            self.registry.count_outcome(server.server_id, task_id, done=False)
            self.service.task_failed(task)
            log.warning(
                "task attempt failed",
                extra={
                    "task_id": task_id,
                    "worker_id": server.server_id,
                    "code": code,
                    "retryable": retryable,
                    "dead_letter": task.dead_letter,
                },
            )
            return {
                "task_id": task_id,
                "state": task.state.value,
                "attempts": task.attempts,
                "dead_letter": task.dead_letter,
                "retry_at": task.ready_at if task.state is TaskState.QUEUED else None,
            }

        return self._once(server, task_id, event_id, payload, act)

    # -------------------------------------------------------------- reference densities

    def reference_density(
        self, server: ComputeServer, task_id: str, epoch: int, lease_id: str
    ) -> bytes | None:
        """The shipped density of the reference of the task ``server`` holds, or None.

        The server names only its leased task; the reference comes from that task's own
        spec, so a worker can fetch only the density of a job that wants this task.
        """
        task = self._held(server, task_id, epoch, lease_id)
        reference = task.spec.reference_key
        if not self.settings.warm_start_share or reference is None or reference == task_id:
            return None
        return self.store.get_reference_density(reference)

    def store_reference_density(
        self, server: ComputeServer, task_id: str, epoch: int, lease_id: str, blob: bytes
    ) -> bool:
        """Keep the density of reference task ``task_id``, computed under the server's
        lease (the first one stored stays); False if one is there or sharing is off."""
        task = self._held(server, task_id, epoch, lease_id)
        if task.spec.reference_key != task_id or not is_reference(task.spec):
            raise InputError(
                "only a job's reference (undisplaced) task ships its density",
                code="not_a_reference_task",
            )
        cap = self.settings.warm_start_share_max_bytes
        if len(blob) > cap:
            raise InputTooLarge(
                f"the density is {len(blob)} bytes; at most {cap} are accepted",
                code="density_too_large",
            )
        if not self.settings.warm_start_share:
            return False
        return self.store.put_reference_density(task_id, blob)

    # -------------------------------------------------------------- idempotency by event id

    def _once(
        self,
        server: ComputeServer,
        task_id: str,
        event_id: str,
        payload: dict[str, Any],
        act: Callable[[], dict[str, Any]],
    ) -> dict[str, Any]:
        """Run ``act`` once per ``(server, task, event_id)``; repeats get the recorded answer."""
        if not _EVENT_ID.match(event_id):
            raise InputError(
                "event_id must be 8-100 characters of [A-Za-z0-9._-]", code="invalid_event_id"
            )
        canonical = json.dumps([server.server_id, task_id, payload], sort_keys=True)
        fingerprint = hashlib.sha256(canonical.encode()).hexdigest()
        key = f"events/{task_id}/{server.server_id}-{event_id}"
        while True:
            try:
                self.store.create_document(key, EventRecord(fingerprint=fingerprint))
                break
            except AlreadyExists:
                record = self._wait_recorded(key)
                if record is None:  # a crashed request's claim, removed: claim it ourselves
                    continue
                if record.fingerprint != fingerprint:
                    raise StateConflict(
                        f"event id {event_id} was already used with a different payload",
                        code="event_id_reused",
                    ) from None
                return _replay(record)
        try:
            answer = act()
        except StateConflict as exc:
            self._record(key, "conflict", {}, exc)
            raise
        except BaseException:
            # Not an answer (store outage, bug): forget the claim so a retry runs again.
            self.store.delete_document(key)
            raise
        self._record(key, "answered", answer, None)
        return answer

    def _record(self, key: str, state: str, answer: dict[str, Any], exc: ZpeError | None) -> None:
        def change(record: EventRecord) -> EventRecord:
            record.state = state
            record.answer = answer
            if exc is not None:
                record.error_code = exc.code
                record.error_message = exc.message
            return record

        self.store.mutate_document(key, EventRecord, change)

    def _wait_recorded(self, key: str) -> EventRecord | None:
        """The recorded answer at ``key``, waiting while its first request still runs."""
        deadline = time.monotonic() + _PENDING_WAIT_SECONDS
        while True:
            found = self.store.get_document(key, EventRecord)
            if found is None:
                return None
            record = found.value
            if record.state != "pending":
                return record
            if now() - record.created_at > _PENDING_STALE_SECONDS:
                self.store.delete_document(key)
                return None
            if time.monotonic() > deadline:
                raise StateConflict(
                    "the same event is still being processed; retry", code="event_in_progress"
                )
            time.sleep(0.05)

    # -------------------------------------------------------------- admin

    def revoke_server(self, server_id: str, *, actor: str) -> ComputeServer:
        """Revoke a server and put the tasks it holds back in the queue at once."""
        server = self.registry.revoke(server_id, actor=actor)
        for task_id, epoch in list(server.leases.items()):
            with contextlib.suppress(StaleLease, NotFound):
                self.store.release_task(task_id, epoch)
            self.registry.note_lease(server_id, task_id, None)
        return self.registry.get_server(server_id)

    def live_leases(self, server: ComputeServer) -> dict[str, int]:
        """The server's leases that are still current (its record may lag behind the reaper)."""
        live = {}
        for task_id, epoch in server.leases.items():
            found = self.store.get_task(task_id)
            lease = found.value.lease if found else None
            if lease is not None and lease.epoch == epoch and lease.worker_id == server.server_id:
                live[task_id] = epoch
        return live

    def requeue_dead_letter(
        self, task_id: str, *, resubmit_jobs: bool = True
    ) -> tuple[Task, dict[str, str]]:
        """Put a dead-lettered task back in the queue with fresh attempts.

        Its jobs failed for good (a finished job never changes), so with
        ``resubmit_jobs`` each of them is submitted again with the same request
        and owner: the new job reuses every finished task and waits for this one.
        Returns the task and ``{old job id: new job id}``.
        """
        found = self.store.get_task(task_id)
        if found is None:
            raise NotFound(f"task {task_id} not found")
        if not found.value.dead_letter:
            raise StateConflict(
                f"task {task_id} is {found.value.state.value}, not a dead letter",
                code="not_dead_letter",
            )
        task = self.store.requeue_task(task_id)
        resubmitted: dict[str, str] = {}
        if resubmit_jobs:
            for job_id in task.subscribers:
                job = self.store.get_job(job_id)
                if job is None or job.value.state is not JobState.FAILED:
                    continue
                new_job, _ = self.service.submit(job.value.request, owner=job.value.owner)
                resubmitted[job_id] = new_job.job_id
        log.info("dead letter re-queued", extra={"task_id": task_id, "jobs": resubmitted})
        again = self.store.get_task(task_id)
        return (again.value if again else task), resubmitted


def _committed_by(task: Task, server: ComputeServer, epoch: int) -> bool:
    """``task`` is done with the result ``server`` committed under lease ``epoch``."""
    return (
        task.state is TaskState.DONE
        and task.epoch == epoch
        and task.result is not None
        and task.result.worker_id == server.server_id
    )


def _replay(record: EventRecord) -> dict[str, Any]:
    if record.state == "conflict":
        raise StaleLease(record.error_message or "stale lease", code=record.error_code)
    return record.answer
