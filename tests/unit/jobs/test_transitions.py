"""The task transitions: every edge of the diagram, the refused ones, the one retry rule.

Plain functions on a ``Task`` with the time passed in, so no store and no clock here;
the store's use of them is proven on every backend by tests/contract.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Callable

import pytest

from zpe_client.models import ErrorInfo, ErrorSource, TaskResult, TaskSpec, TaskState
from zpe_core.errors import StaleLease
from zpe_core.jobs import transitions
from zpe_core.jobs.models import RetryPolicy, Task

T0 = 1_000_000.0
POLICY = RetryPolicy(retry_max=3, backoff_base_seconds=10.0, backoff_cap_seconds=300.0)
BOOM = ErrorInfo(code="engine_failed", message="boom", source=ErrorSource.COMPUTE, retryable=True)
RESULT = TaskResult(
    energy_ev=-31.0, forces_ev_per_a=[[0.0, 0.0, 0.0]], engine="mock", engine_version="1"
)


def queued(*, ready_at: float = T0, attempts: int = 0) -> Task:
    spec = TaskSpec(
        engine="mock",
        engine_version="1",
        symbols=["H"],
        positions=[[0.0, 0.0, 0.0]],
        cell=[[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]],
        pbc=[False, False, False],
    )
    return Task(task_id="t1", spec=spec, ready_at=ready_at, attempts=attempts)


def leased(*, attempts: int = 0, lease_seconds: float = 60.0) -> Task:
    task = transitions.claim(queued(attempts=attempts), "w1", lease_seconds, at=T0)
    assert task is not None
    return task


def in_state(state: TaskState) -> Task:
    task = queued()
    task.state = state
    return task


# ---------------------------------------------------------------------- claim


def test_claim_leases_a_due_queued_task_under_a_new_epoch() -> None:
    task = transitions.claim(queued(), "w1", 60.0, at=T0 + 1)
    assert task is not None and task.state is TaskState.LEASED
    assert task.epoch == 1 and task.attempts == 0
    assert task.lease is not None
    assert (task.lease.epoch, task.lease.worker_id, task.lease.expires_at) == (1, "w1", T0 + 61)
    assert [(r.epoch, r.worker_id, r.started_at, r.ended_at) for r in task.history] == [
        (1, "w1", T0 + 1, None)
    ]


def test_claim_waits_for_ready_at_unless_told_to_ignore_it() -> None:
    assert transitions.claim(queued(ready_at=T0 + 10), "w1", 60.0, at=T0) is None
    forced = transitions.claim(queued(ready_at=T0 + 10), "w1", 60.0, at=T0, ignore_ready_at=True)
    assert forced is not None and forced.state is TaskState.LEASED


def test_claim_takes_over_an_expired_lease_counting_the_attempt() -> None:
    task = leased(lease_seconds=60.0)
    again = transitions.claim(task, "w2", 60.0, at=T0 + 61)
    assert again is not None and again.lease is not None
    assert (again.epoch, again.attempts, again.lease.worker_id) == (2, 1, "w2")
    assert [r.outcome for r in again.history] == ["expired", None]


def test_claim_refuses_a_live_lease_and_every_settled_task() -> None:
    assert transitions.claim(leased(lease_seconds=60.0), "w2", 60.0, at=T0 + 59) is None
    for state in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED):
        assert transitions.claim(in_state(state), "w1", 60.0, at=T0) is None


# ---------------------------------------------------------------------- heartbeat, commit


def test_heartbeat_extends_the_current_lease_only() -> None:
    task = transitions.heartbeat(leased(), 1, 120.0, at=T0 + 30)
    assert task.lease is not None and task.lease.expires_at == T0 + 150
    with pytest.raises(StaleLease):
        transitions.heartbeat(leased(), 2, 120.0, at=T0 + 30)
    with pytest.raises(StaleLease):
        transitions.heartbeat(queued(), 0, 120.0, at=T0)


def test_commit_moves_the_current_lease_to_done() -> None:
    task = transitions.commit(leased(), 1, RESULT, at=T0 + 5)
    assert task is not None and task.state is TaskState.DONE
    assert task.result == RESULT and task.lease is None and task.error is None
    assert (task.history[-1].outcome, task.history[-1].ended_at) == ("done", T0 + 5)
    # The same epoch again (a retried POST): no change, no error.
    assert transitions.commit(task, 1, RESULT) is None


def test_commit_refuses_a_stale_epoch_and_an_unleased_task() -> None:
    task = transitions.claim(leased(lease_seconds=1.0), "w2", 60.0, at=T0 + 2)  # epoch 2
    assert task is not None
    with pytest.raises(StaleLease):
        transitions.commit(task, 1, RESULT)
    done = transitions.commit(task, 2, RESULT)
    assert done is not None
    with pytest.raises(StaleLease):  # done by epoch 2: epoch 1 is still refused
        transitions.commit(done, 1, RESULT)
    with pytest.raises(StaleLease):
        transitions.commit(queued(), 0, RESULT)


# ---------------------------------------------------------------------- fail, release, expire


def test_fail_with_attempts_left_requeues_after_the_backoff() -> None:
    task = transitions.fail(leased(), 1, BOOM, retryable=True, policy=POLICY, at=T0 + 5)
    assert task is not None and task.state is TaskState.QUEUED
    assert (task.attempts, task.lease, task.error, task.dead_letter) == (1, None, BOOM, False)
    assert T0 + 5 + 5 <= task.ready_at <= T0 + 5 + 10  # backoff(1): [base/2, base]
    assert (task.history[-1].outcome, task.history[-1].error) == ("failed", BOOM)


def test_fail_not_retryable_is_a_dead_letter_at_once() -> None:
    task = transitions.fail(leased(), 1, BOOM, retryable=False, policy=POLICY, at=T0)
    assert task is not None
    assert (task.state, task.dead_letter, task.attempts) == (TaskState.FAILED, True, 1)


def test_fail_without_an_epoch_fails_a_task_no_worker_ran() -> None:
    task = transitions.fail(queued(), None, BOOM, retryable=False, policy=POLICY, at=T0)
    assert task is not None and task.state is TaskState.FAILED and task.dead_letter


def test_fail_refuses_a_stale_epoch_and_leaves_settled_tasks_alone() -> None:
    with pytest.raises(StaleLease):
        transitions.fail(leased(), 7, BOOM, retryable=True, policy=POLICY)
    for state in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED):
        assert transitions.fail(in_state(state), None, BOOM, retryable=True, policy=POLICY) is None


def test_release_gives_the_lease_back_due_now_without_an_attempt() -> None:
    task = transitions.release(leased(), 1, at=T0 + 3)
    assert (task.state, task.lease, task.ready_at, task.attempts) == (
        TaskState.QUEUED,
        None,
        T0 + 3,
        0,
    )
    assert task.history[-1].outcome == "released"
    with pytest.raises(StaleLease):
        transitions.release(task, 1)


def test_expire_requeues_an_expired_lease_through_the_retry_rule() -> None:
    task = transitions.expire(leased(lease_seconds=60.0), 1, POLICY, at=T0 + 61)
    assert task is not None and task.state is TaskState.QUEUED
    assert task.attempts == 1 and task.error is not None
    assert (task.error.code, task.error.retryable) == ("lease_expired", True)
    assert "w1" in task.error.message
    assert task.history[-1].outcome == "expired"
    assert T0 + 61 + 5 <= task.ready_at <= T0 + 61 + 10


def test_expire_leaves_a_live_renewed_or_replaced_lease_alone() -> None:
    assert transitions.expire(leased(lease_seconds=60.0), 1, POLICY, at=T0 + 59) is None
    assert transitions.expire(leased(lease_seconds=60.0), 2, POLICY, at=T0 + 61) is None
    assert transitions.expire(queued(), 0, POLICY, at=T0) is None


def test_the_last_expiry_makes_a_dead_letter() -> None:
    task = transitions.expire(leased(attempts=2, lease_seconds=1.0), 1, POLICY, at=T0 + 2)
    assert task is not None
    assert (task.state, task.dead_letter, task.attempts) == (TaskState.FAILED, True, 3)


# ---------------------------------------------------------------------- redeliver, requeue


def test_redeliver_counts_the_lost_delivery_and_backs_off() -> None:
    seen = queued()
    task = transitions.redeliver(seen.model_copy(deep=True), seen, BOOM, POLICY, at=T0 + 900)
    assert task is not None and task.state is TaskState.QUEUED and task.attempts == 1
    assert T0 + 905 <= task.ready_at <= T0 + 910


def test_redeliver_leaves_a_task_moved_since_it_was_seen() -> None:
    seen = queued()
    claimed = transitions.claim(seen.model_copy(deep=True), "w1", 60.0, at=T0)
    assert claimed is not None
    assert transitions.redeliver(claimed, seen, BOOM, POLICY) is None
    counted = queued(attempts=1)
    assert transitions.redeliver(counted, seen, BOOM, POLICY) is None


def test_requeue_revives_failed_and_cancelled_tasks_with_fresh_attempts() -> None:
    dead = transitions.fail(leased(), 1, BOOM, retryable=False, policy=POLICY, at=T0)
    assert dead is not None
    for task in (dead, in_state(TaskState.CANCELLED)):
        again = transitions.requeue(task, at=T0 + 50)
        assert again is not None
        assert (again.state, again.attempts, again.dead_letter, again.error, again.ready_at) == (
            TaskState.QUEUED,
            0,
            False,
            None,
            T0 + 50,
        )


def test_requeue_leaves_live_and_done_tasks_alone() -> None:
    for task in (queued(), leased(), in_state(TaskState.DONE)):
        before = task.model_copy(deep=True)
        assert transitions.requeue(task) is None
        assert task == before


# ---------------------------------------------------------------------- refused edges


@pytest.mark.parametrize(
    "edge",
    [
        lambda t: transitions.claim(t, "w2", 60.0, at=T0),
        lambda t: transitions.commit(t, 0, RESULT),
        lambda t: transitions.fail(t, 0, BOOM, retryable=True, policy=POLICY),
        lambda t: transitions.release(t, 0),
        lambda t: transitions.expire(t, 0, POLICY, at=T0 + 1000),
        lambda t: transitions.requeue(t),
        lambda t: transitions.heartbeat(t, 0, 60.0),
    ],
)
def test_a_refused_edge_leaves_the_task_as_it_was(edge: Callable[[Task], Task | None]) -> None:
    """Answered ``None`` or ``StaleLease``, the task given is untouched (nothing to write)."""
    for task in (leased(), in_state(TaskState.DONE)):
        before = task.model_copy(deep=True)
        with contextlib.suppress(StaleLease):
            assert edge(task) is None
        assert task == before


# ---------------------------------------------------------------------- the retry rule


def test_retry_rule_counts_attempts_until_retry_max_then_dead_letters() -> None:
    task = queued()
    states = []
    for _ in range(POLICY.retry_max):
        transitions.retry_or_dead_letter(task, BOOM, POLICY, retryable=True, at=T0)
        states.append((task.state, task.attempts, task.dead_letter))
    assert states == [
        (TaskState.QUEUED, 1, False),
        (TaskState.QUEUED, 2, False),
        (TaskState.FAILED, 3, True),
    ]
    assert task.error == BOOM and task.lease is None


@pytest.mark.parametrize("attempts", [1, 2, 3, 4, 5, 6, 7, 10])
def test_backoff_is_exponential_capped_and_jittered_over_the_upper_half(attempts: int) -> None:
    ceiling = min(POLICY.backoff_cap_seconds, POLICY.backoff_base_seconds * 2 ** (attempts - 1))
    never_dead = dataclasses.replace(POLICY, retry_max=99)
    random.seed(attempts)
    delays = []
    for _ in range(200):
        task = queued(attempts=attempts - 1)
        transitions.retry_or_dead_letter(task, BOOM, never_dead, retryable=True, at=T0)
        delays.append(task.ready_at - T0)
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 4  # jittered, not one fixed delay


def test_no_backoff_policy_requeues_due_at_once() -> None:
    instant = RetryPolicy(retry_max=2, backoff_base_seconds=0.0, backoff_cap_seconds=0.0)
    task = transitions.retry_or_dead_letter(queued(), BOOM, instant, retryable=True, at=T0)
    assert task.state is TaskState.QUEUED and task.ready_at == T0
