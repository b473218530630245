"""The status poll's cache (``zpe_api.status_cache``): the job's record is parsed once
per revision, and nothing a poll answers is ever older than the store."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import wait_for
from tests.api.test_jobs_api import assert_problem, submit
from zpe_api.routers.jobs import status_json
from zpe_api.status_cache import StatusCache
from zpe_core.jobs.models import now
from zpe_core.jobs.runner import run_task


def count_record_reads(store: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``get_job`` of ``store`` from now on (the whole record, parsed)."""
    reads: list[str] = []
    original = store.get_job

    def get_job(job_id: str) -> Any:
        reads.append(job_id)
        return original(job_id)

    monkeypatch.setattr(store, "get_job", get_job)
    return reads


def test_polls_parse_the_record_once_per_revision_and_see_every_change(
    idle_client: TestClient, h2_input: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = submit(idle_client, h2_input, symmetry="off").json()["job_id"]
    service = idle_client.app.state.service  # type: ignore[attr-defined]
    tasks = [ref.task_id for ref in service.store.get_job(job_id).value.tasks]
    reads = count_record_reads(service.store, monkeypatch)
    url = f"/calc/zpe/jobs/{job_id}"
    first = idle_client.get(url)
    for _ in range(10):
        assert idle_client.get(url).json() == first.json() | {"elapsed_seconds": None}
        assert (
            idle_client.get(url, headers={"If-None-Match": first.headers["ETag"]}).status_code
            == 304
        )
    assert reads == [job_id], "a poll parsed the job's record again at the same revision"

    run_task(service, tasks[0], "w1")  # starts the job: its record is written (new revision)
    reads.clear()
    started = idle_client.get(url, headers={"If-None-Match": first.headers["ETag"]})
    assert started.status_code == 200
    assert started.json()["state"] == "running" and started.json()["progress"]["done"] == 1
    assert reads == [job_id]
    run_task(service, tasks[1], "w1")  # a done marker only: the same revision, a new count
    reads.clear()
    moved = idle_client.get(url, headers={"If-None-Match": started.headers["ETag"]})
    assert moved.status_code == 200 and moved.json()["progress"]["done"] == 2
    assert moved.headers["ETag"] != started.headers["ETag"]
    assert moved.headers["Retry-After"] == "2"
    assert reads == [], "a done marker alone re-read the job's record"

    idle_client.post(f"{url}/cancel")  # a record write: seen at the next poll
    cancelled = idle_client.get(url, headers={"If-None-Match": moved.headers["ETag"]})
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert "Retry-After" not in cancelled.headers


def test_a_finished_jobs_kept_answer_is_what_its_record_renders_to(
    client: TestClient, h2_input: str
) -> None:
    job_id = submit(client, h2_input).json()["job_id"]
    assert wait_for(client, job_id)["state"] == "done"
    url = f"/calc/zpe/jobs/{job_id}"
    kept = [client.get(url) for _ in range(3)]
    service = client.app.state.service  # type: ignore[attr-defined]
    job, rev = service.get_job(job_id)
    expected = status_json(job, len(service.done_task_ids(job)), now())
    assert all(answer.json() == expected for answer in kept)
    assert kept[0].headers["ETag"] == f'"{rev:x}.{job.total_tasks:x}"'
    assert kept[0].headers["content-type"] == "application/json"


def test_a_job_gone_from_the_store_is_404_though_polled_before(
    client: TestClient, h2_input: str
) -> None:
    job_id = submit(client, h2_input).json()["job_id"]
    wait_for(client, job_id)
    store = client.app.state.store  # type: ignore[attr-defined]
    store._delete(f"jobs/{job_id}")
    assert_problem(client.get(f"/calc/zpe/jobs/{job_id}"), 404, "not_found")


def test_done_ids_on_a_running_record_count_with_the_markers(
    idle_client: TestClient, h2_input: str
) -> None:
    """A record written before done markers existed lists its done tasks itself."""
    job_id = submit(idle_client, h2_input, symmetry="off").json()["job_id"]
    service = idle_client.app.state.service  # type: ignore[attr-defined]
    tasks = [ref.task_id for ref in service.store.get_job(job_id).value.tasks]
    run_task(service, tasks[0], "w1")  # running, one marker

    def legacy(job: Any) -> Any:
        job.done_task_ids = [tasks[0], tasks[1]]  # one of them also has a marker
        return job

    service.store.mutate_job(job_id, legacy)
    status = idle_client.get(f"/calc/zpe/jobs/{job_id}").json()
    assert status["progress"]["done"] == 2 == len(service.done_task_ids(service.get_job(job_id)[0]))


def test_the_cache_is_bounded(idle_client: TestClient, h2_input: str) -> None:
    service = idle_client.app.state.service  # type: ignore[attr-defined]
    statuses = StatusCache(service, status_json, size=2)
    ids = [submit(idle_client, h2_input, delta=0.01 + i * 1e-4).json()["job_id"] for i in range(3)]
    for job_id in ids:
        assert statuses.poll(job_id, owner="anonymous").done == 0
    assert list(statuses._entries) == ids[1:]
