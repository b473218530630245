"""Every change of a task's state, as plain functions on a task, and the one retry rule.

Task states::

    queued -> leased -> done
                     -> queued   (lease expired or retryable failure, attempts left)
                     -> failed   (permanent failure or attempts exhausted: dead letter)
    queued -> queued             (delivery lost: attempts left)
    queued -> failed             (undeliverable, or failed before any worker ran it)
    queued/leased -> cancelled   (every job that wanted it ended)
    failed/cancelled -> queued   (a new job wants it, or an admin re-queues it)

The edges, one function each (``at`` is the time of the change, default now):

=============  ==============================  ===============================  =========
function       from                            to                               attempt
=============  ==============================  ===============================  =========
``claim``      queued and due                  leased (epoch + 1)               no
``claim``      leased, lease expired           leased (epoch + 1)               counted
``heartbeat``  leased at ``epoch``             leased, later expiry             no
``commit``     leased at ``epoch``             done                             no
``fail``       queued, or leased at ``epoch``  the retry rule                   counted
``release``    leased at ``epoch``             queued, due now                  no
``expire``     leased, that lease expired      the retry rule                   counted
``redeliver``  queued, unchanged since seen    the retry rule                   counted
``requeue``    failed or cancelled             queued, due now                  reset
=============  ==============================  ===============================  =========

The cancel edge (queued -> cancelled once no job wants the task) needs the jobs, so
``JobService.abandon_if_unwanted`` makes it.

Each function changes the task it is given in place (``JobStore._mutate`` hands it a
private copy) and returns it, or returns ``None``, the task untouched, when the edge
does not apply (a settled task, a lease renewed meanwhile, a repeated commit). A caller
whose lease is no longer current gets ``StaleLease``: it must stop working on the task.

**The retry rule** (``retry_or_dead_letter``, the only place it is written): a failed,
expired or undelivered attempt counts one attempt; while the failure is retryable and
fewer than ``policy.retry_max`` attempts were made, the task waits in the queue for
``policy.backoff(attempts)`` (exponential from ``backoff_base_seconds``, capped at
``backoff_cap_seconds``, jittered uniformly over the upper half); otherwise it fails for
good as a dead letter, with the last error.

**Backoff on the Cloud Tasks path.** ``redeliver`` (the cloud-tasks reconciler found a
task whose push task is gone) applies the same rule, backoff included. The queue's own
retry config covers one push task's HTTP deliveries; the store's attempts count
dispatches, a layer above, so the two do not double up. The delay costs little (at most
``backoff_cap_seconds`` after ``ZPE_REDISPATCH_AFTER_SECONDS`` of waiting already, held
by Cloud Tasks through ``schedule_time``), and the jitter spreads out a round that
re-dispatches many tasks at once (a purged queue, a worker that was unreachable), so a
recovering worker does not get them all in the same second.
"""

from __future__ import annotations

import secrets
from typing import Literal

from zpe_client.models import AttemptRecord, ErrorInfo, ErrorSource, TaskResult, TaskState
from zpe_core.errors import StaleLease
from zpe_core.jobs.models import Lease, RetryPolicy, Task, now


def retry_or_dead_letter(
    task: Task, error: ErrorInfo, policy: RetryPolicy, *, retryable: bool, at: float | None = None
) -> Task:
    """Count a failed attempt: back in the queue after the backoff, or a dead letter."""
    t = now() if at is None else at
    task.attempts += 1
    task.lease = None
    task.error = error
    if retryable and task.attempts < policy.retry_max:
        task.state = TaskState.QUEUED
        task.ready_at = t + policy.backoff(task.attempts)
    else:
        task.state = TaskState.FAILED
        task.dead_letter = True
    return task


def claim(
    task: Task,
    worker_id: str,
    lease_seconds: float,
    *,
    ignore_ready_at: bool = False,
    at: float | None = None,
) -> Task | None:
    """Lease a queued, due task (or one whose lease expired, counting that attempt).

    The expired attempt counts, but the claim goes on whatever the count: a worker is
    here to run it now, and the retry rule is the reaper's (``expire``).
    """
    t = now() if at is None else at
    if task.state is TaskState.LEASED and task.lease and task.lease.expires_at <= t:
        _close_attempt(task, "expired", at=t)
        task.attempts += 1
    elif task.state is not TaskState.QUEUED or (task.ready_at > t and not ignore_ready_at):
        return None
    task.epoch += 1
    task.state = TaskState.LEASED
    task.lease = Lease(
        lease_id=secrets.token_hex(8),
        epoch=task.epoch,
        worker_id=worker_id,
        expires_at=t + lease_seconds,
        acquired_at=t,
    )
    task.history.append(AttemptRecord(epoch=task.epoch, worker_id=worker_id, started_at=t))
    return task


def heartbeat(task: Task, epoch: int, lease_seconds: float, *, at: float | None = None) -> Task:
    """Extend the lease held at ``epoch`` to ``lease_seconds`` from now."""
    lease = require_lease(task, epoch)
    lease.expires_at = (now() if at is None else at) + lease_seconds
    return task


def commit(task: Task, epoch: int, result: TaskResult, *, at: float | None = None) -> Task | None:
    """Record the result of the lease held at ``epoch``; ``None`` if that epoch already did."""
    if task.state is TaskState.DONE and task.lease is None and task.epoch == epoch:
        return None
    require_lease(task, epoch)
    _close_attempt(task, "done", at=at)
    task.state = TaskState.DONE
    task.result = result
    task.error = None
    task.lease = None
    return task


def fail(
    task: Task,
    epoch: int | None,
    error: ErrorInfo,
    *,
    retryable: bool,
    policy: RetryPolicy,
    at: float | None = None,
) -> Task | None:
    """A failed attempt, through the retry rule; ``None`` if the task is settled.

    ``epoch=None`` fails it whatever its lease (a dispatcher that could not deliver it).
    """
    if task.state.settled:
        return None
    if epoch is not None:
        require_lease(task, epoch)
    _close_attempt(task, "failed", error, at=at)
    return retry_or_dead_letter(task, error, policy, retryable=retryable, at=at)


def release(task: Task, epoch: int, *, at: float | None = None) -> Task:
    """Give the lease held at ``epoch`` back, due again now, no attempt counted."""
    require_lease(task, epoch)
    t = now() if at is None else at
    _close_attempt(task, "released", at=t)
    task.state = TaskState.QUEUED
    task.lease = None
    task.ready_at = t
    return task


def expire(
    task: Task, expired_epoch: int, policy: RetryPolicy, *, at: float | None = None
) -> Task | None:
    """The lease of ``expired_epoch`` ran out: through the retry rule.

    ``None`` if that lease is gone or was renewed meanwhile.
    """
    t = now() if at is None else at
    lease = task.lease
    if task.state is not TaskState.LEASED or lease is None:
        return None
    if lease.epoch != expired_epoch or lease.expires_at > t:
        return None
    _close_attempt(task, "expired", at=t)
    error = ErrorInfo(
        code="lease_expired",
        message=f"worker {lease.worker_id} stopped heartbeating",
        source=ErrorSource.COMPUTE,
        retryable=True,
    )
    return retry_or_dead_letter(task, error, policy, retryable=True, at=t)


def redeliver(
    task: Task, seen: Task, error: ErrorInfo, policy: RetryPolicy, *, at: float | None = None
) -> Task | None:
    """Its delivery was lost (no push task left): through the retry rule.

    ``None`` unless the task is queued and unchanged since ``seen`` (same epoch and
    attempts): a worker or another reconciler moved it meanwhile.
    """
    if (
        task.state is not TaskState.QUEUED
        or task.epoch != seen.epoch
        or task.attempts != seen.attempts
    ):
        return None
    return retry_or_dead_letter(task, error, policy, retryable=True, at=at)


def requeue(task: Task, *, at: float | None = None) -> Task | None:
    """Put a failed or cancelled task back in the queue with fresh attempts."""
    if task.state not in (TaskState.FAILED, TaskState.CANCELLED):
        return None
    task.state = TaskState.QUEUED
    task.attempts = 0
    task.dead_letter = False
    task.error = None
    task.ready_at = now() if at is None else at
    return task


def require_lease(task: Task, epoch: int) -> Lease:
    """The lease held at ``epoch``, or ``StaleLease`` if it is not the current one."""
    if task.state is not TaskState.LEASED or task.lease is None or task.lease.epoch != epoch:
        current = task.lease.epoch if task.lease else None
        raise StaleLease(
            f"lease epoch {epoch} is not current for task {task.task_id} "
            f"(state {task.state.value}, current epoch {current})"
        )
    return task.lease


def _close_attempt(
    task: Task,
    outcome: Literal["done", "failed", "expired", "released"],
    error: ErrorInfo | None = None,
    *,
    at: float | None = None,
) -> None:
    if task.history and task.history[-1].ended_at is None:
        record = task.history[-1]
        record.ended_at = now() if at is None else at
        record.outcome = outcome
        record.error = error
