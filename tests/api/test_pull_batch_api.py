"""The batched worker API (issue 17): several leases, heartbeats and outcomes per request.

Each item of a batch keeps its own lease (epoch and lease id) and event id and is
answered as its single-task route would answer it: a stale item is refused alone, a
repeat is replayed by event id, and a batch over ``ZPE_PULL_BATCH_MAX`` is refused
whole with a 422 that names the limit, before anything is leased or stored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi.testclient import TestClient

from tests.api.test_pull_api import (
    Server,
    admin,
    client,
    pull_settings,
    submit,
    task_of,
    wait_for,
)
from zpe_api.main import create_app

__all__ = ["client"]  # the fixture


def leases(server: Server, max_tasks: int, wait: float = 0.0) -> list[dict[str, Any]]:
    response = server.post("/tasks/leases", {"max_tasks": max_tasks, "wait_seconds": wait})
    if response.status_code == 204:
        return []
    assert response.status_code == 200, response.text
    granted: list[dict[str, Any]] = response.json()["leases"]
    return granted


def ref(grant: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {
        "task_id": grant["task_id"],
        "epoch": grant["epoch"],
        "lease_id": grant["lease_id"],
        **changes,
    }


def heartbeats(server: Server, *grants: dict[str, Any]) -> Any:
    return server.post("/tasks/heartbeats", {"leases": [ref(g) for g in grants]})


def result_item(server: Server, grant: dict[str, Any], event: str | None = None) -> dict[str, Any]:
    return ref(grant, event_id=event or uuid.uuid4().hex, result=server.compute(grant))


def failure_item(grant: dict[str, Any], event: str | None = None) -> dict[str, Any]:
    failure = {"retryable": True, "code": "pwx_crashed", "reason": "node went away"}
    return ref(grant, event_id=event or uuid.uuid4().hex, failure=failure)


def outcomes(server: Server, *items: dict[str, Any]) -> Any:
    return server.post("/tasks/outcomes", {"outcomes": list(items)})


def statuses(response: Any) -> list[tuple[int, str | None]]:
    assert response.status_code == 200, response.text
    return [(item["status"], item["code"]) for item in response.json()["items"]]


def metric(client: TestClient, name: str, route: str) -> float:
    """A counter of this process's registry, read through ``GET /metrics``."""
    prefix = f'{name}{{route="{route}"}} '
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def test_a_batched_lease_grants_up_to_max_tasks_each_under_its_own_lease(
    client: TestClient,
) -> None:
    job_id = submit(client)  # H2: 4 tasks
    server = Server(client)
    requests_before = metric(client, "zpe_pull_lease_requests_total", "leases")
    tasks_before = metric(client, "zpe_pull_tasks_leased_total", "leases")
    first = leases(server, 3)
    assert len(first) == 3
    assert len({g["task_id"] for g in first}) == 3 and len({g["lease_id"] for g in first}) == 3
    assert all(g["epoch"] == 1 and g["job_ids"] == [job_id] for g in first)
    for grant in first:
        lease = task_of(client, grant["task_id"]).lease
        assert (lease.worker_id, lease.lease_id) == (server.server_id, grant["lease_id"])
    rest = leases(server, 3)
    assert len(rest) == 1 and rest[0]["task_id"] not in {g["task_id"] for g in first}
    assert leases(server, 3) == []  # 204: nothing left, and not counted as a grant
    assert metric(client, "zpe_pull_lease_requests_total", "leases") - requests_before == 2
    assert metric(client, "zpe_pull_tasks_leased_total", "leases") - tasks_before == 4
    # One request commits all four; the job is done.
    answer = outcomes(server, *(result_item(server, g) for g in first + rest))
    assert statuses(answer) == [(200, None)] * 4
    assert [item["answer"]["committed"] for item in answer.json()["items"]] == [True] * 4
    assert wait_for(client, job_id)["state"] == "done"


def test_a_batch_larger_than_allowed_is_refused_with_the_limit() -> None:
    with TestClient(create_app(pull_settings(pull_batch_max=2))) as client:
        job_id = submit(client)
        server = Server(client)
        too_many = server.post("/tasks/leases", {"max_tasks": 3})
        assert too_many.status_code == 422, too_many.text
        assert too_many.json()["code"] == "batch_too_large"
        assert "at most 2" in too_many.json()["detail"]
        listed = client.get("/calc/zpe/compute/servers", headers=admin()).json()["servers"]
        assert listed[0]["running"] == {}  # nothing was leased
        assert client.get(f"/calc/zpe/jobs/{job_id}").json()["state"] == "queued"
        granted = leases(server, 2)
        assert len(granted) == 2
        for response in (
            heartbeats(server, *granted, granted[0]),
            outcomes(server, *(result_item(server, g) for g in [*granted, granted[0]])),
        ):
            assert response.status_code == 422, response.text
            assert response.json()["code"] == "batch_too_large"
            assert "at most 2" in response.json()["detail"]
        assert all(task_of(client, g["task_id"]).result is None for g in granted)
        assert statuses(heartbeats(server, *granted)) == [(200, None)] * 2


def test_a_stale_epoch_in_a_batch_refuses_that_item_only() -> None:
    settings = pull_settings(lease_seconds=3.0, reaper_interval_seconds=0.1)
    with TestClient(create_app(settings)) as client:
        submit(client, symmetry="off")  # 13 tasks: the second server has others to take
        first, second = Server(client, name="first"), Server(client, name="second")
        stale, kept = leases(first, 2)
        # Heartbeats are per task: beating ``kept`` alone keeps it, ``stale`` expires and
        # the second server leases it at epoch 2.
        regrant = None
        deadline = time.monotonic() + 20
        while regrant is None:
            assert time.monotonic() < deadline, "the expired lease was never re-leased"
            assert statuses(heartbeats(first, kept)) == [(200, None)]
            for grant in leases(second, 4, wait=0.1):
                if grant["task_id"] == stale["task_id"]:
                    regrant = grant
        assert regrant["epoch"] == 2
        assert task_of(client, kept["task_id"]).lease.epoch == 1  # never lost
        beat = heartbeats(first, stale, kept)
        assert statuses(beat) == [(409, "stale_lease"), (200, None)]
        assert beat.json()["items"][1]["answer"]["epoch"] == 1
        # A batch of outcomes: the stale item is refused, the other committed.
        items = [result_item(first, stale), result_item(first, kept)]
        answer = outcomes(first, *items)
        assert statuses(answer) == [(409, "stale_lease"), (200, None)]
        task = task_of(client, stale["task_id"])
        assert task.state.value == "leased" and task.lease.epoch == 2 and task.result is None
        done = task_of(client, kept["task_id"])
        assert done.state.value == "done" and done.result.worker_id == first.server_id
        # The same batch again (same event ids) is answered the same, committing nothing.
        again = outcomes(first, *items)
        assert again.json() == answer.json()
        assert task_of(client, kept["task_id"]).result == done.result
        assert task_of(client, stale["task_id"]).result is None
        # An event id reused with another payload is refused, for that item only.
        other = dict(items[1], result=dict(items[1]["result"], energy_ev=0.0))
        reused = outcomes(first, other)
        assert statuses(reused) == [(409, "event_id_reused")]
        assert task_of(client, kept["task_id"]).result == done.result
        # The single-task routes still answer a worker of the old protocol.
        assert second.result(regrant).status_code == 200


def test_failures_in_a_batch_count_one_attempt_each_and_replay_by_event_id(
    client: TestClient,
) -> None:
    submit(client)
    server = Server(client)
    good, failing, invalid = leases(server, 3)
    bad_result = result_item(server, invalid)
    bad_result["result"]["forces_ev_per_a"] = bad_result["result"]["forces_ev_per_a"][:1]
    items = [result_item(server, good), failure_item(failing), bad_result]
    first = outcomes(server, *items)
    assert statuses(first) == [(200, None), (200, None), (422, "result_shape_mismatch")]
    assert first.json()["items"][1]["answer"]["attempts"] == 1
    assert task_of(client, good["task_id"]).state.value == "done"
    assert task_of(client, failing["task_id"]).attempts == 1
    refused = task_of(client, invalid["task_id"])
    assert refused.state.value == "leased" and refused.result is None  # nothing stored
    replay = outcomes(server, *items[:2])
    assert replay.json()["items"] == first.json()["items"][:2]
    assert task_of(client, failing["task_id"]).attempts == 1  # not two
    # An item is a result or a failure, not both; no item, no request.
    both = dict(items[0], failure=items[1]["failure"])
    assert outcomes(server, both).status_code == 422
    assert outcomes(server).status_code == 422


def test_a_store_outage_in_the_middle_of_a_batch_hands_out_what_is_leased(
    client: TestClient,
) -> None:
    from zpe_core.errors import StoreUnavailable

    submit(client)
    server = Server(client)
    store = client.app.state.store  # type: ignore[attr-defined]
    original, calls = store.claim_next, []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise StoreUnavailable("redis store unavailable (test)")
        return original(*args, **kwargs)

    store.claim_next = flaky
    try:
        granted = leases(server, 3)
        assert len(granted) == 1  # the one leased before the outage, not a 503
        calls[:] = [1]  # the next call fails, before anything is leased
        down = server.post("/tasks/leases", {"max_tasks": 3})
        assert down.status_code == 503, down.text  # nothing leased: the outage is answered
    finally:
        store.claim_next = original
    assert task_of(client, granted[0]["task_id"]).lease.lease_id == granted[0]["lease_id"]
