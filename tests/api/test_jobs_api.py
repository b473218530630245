"""The user API: every endpoint and its error paths, on the mock engine."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.api.conftest import wait_for
from zpe_core.errors import StoreUnavailable


def submit(client: TestClient, text: str, **extra: Any) -> Any:
    headers = extra.pop("headers", {})
    return client.post("/calc/zpe/jobs", json={"input_text": text, **extra}, headers=headers)


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["detail"]
    return body


def test_mock_job_runs_to_done_with_result_and_files(client: TestClient, h2_input: str) -> None:
    created = submit(client, h2_input)
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    assert created.headers["Location"] == f"/calc/zpe/jobs/{job_id}"
    status = wait_for(client, job_id)
    assert status["state"] == "done"
    # H2: 13 points, of which symmetry leaves 4 to compute.
    assert status["progress"] == {"done": 4, "total": 4, "fraction": 1.0, "reused": 0}
    result = client.get(f"/calc/zpe/jobs/{job_id}/result").json()
    for field in (
        "freqs_cm",
        "zpe_ev",
        "s_vib_jmol_k",
        "mobile_indices",
        "fixed_indices",
        "kpts",
        "delta",
        "temperature",
        "pseudo_dir",
        "ecutwfc",
        "ecutrho",
        "started_at",
        "finished_at",
        "elapsed_seconds",
        "engine",
    ):
        assert field in result, field
    assert result["engine"] == "mock"
    assert result["mobile_indices"] == [0, 1]
    assert len(result["freqs_cm"]) == 6
    counted = [m for m in result["modes"] if m["counted"]]
    assert len(counted) == 1  # H2 is linear: 5 of 6 modes are translations/rotations
    assert 3000 < counted[0]["frequency_cm"] < 6000
    assert abs(result["zpe_ev"] - counted[0]["energy_ev"] / 2) < 1e-12
    assert status["summary"]["zpe_ev"] == result["zpe_ev"]

    summary = client.get(f"/calc/zpe/jobs/{job_id}/files", params={"kind": "summary"})
    assert summary.status_code == 200
    assert summary.headers["content-type"].startswith("text/plain")
    assert f"{result['zpe_ev']:.6f} eV" in summary.text
    freqs = client.get(f"/calc/zpe/jobs/{job_id}/files", params={"kind": "freqs"})
    assert freqs.headers["content-type"].startswith("text/csv")
    rows = freqs.text.strip().splitlines()
    assert rows[0] == "mode,frequency_cm,imaginary,counted,energy_ev"
    assert len(rows) == 7
    as_json = client.get(f"/calc/zpe/jobs/{job_id}/files", params={"kind": "result"})
    assert as_json.json()["zpe_ev"] == result["zpe_ev"]


def test_resubmitting_reuses_every_task(client: TestClient, h2_input: str) -> None:
    first = wait_for(client, submit(client, h2_input).json()["job_id"])
    second = wait_for(client, submit(client, h2_input).json()["job_id"])
    assert first["job_id"] != second["job_id"]
    assert second["state"] == "done"
    assert second["progress"]["reused"] == 4
    a = client.get(f"/calc/zpe/jobs/{first['job_id']}/result").json()
    b = client.get(f"/calc/zpe/jobs/{second['job_id']}/result").json()
    assert a["freqs_cm"] == b["freqs_cm"]


def test_idempotency_key_same_payload_same_job_other_payload_409(
    idle_client: TestClient, h2_input: str
) -> None:
    headers = {"Idempotency-Key": "abc-123"}
    first = submit(idle_client, h2_input, headers=headers)
    again = submit(idle_client, h2_input, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["job_id"] == again.json()["job_id"]
    other = submit(idle_client, h2_input, delta=0.02, headers=headers)
    assert_problem(other, 409, "idempotency_key_reused")
    jobs = idle_client.get("/calc/zpe/jobs").json()["jobs"]
    assert [j["job_id"] for j in jobs] == [first.json()["job_id"]]


def test_status_etag_304_and_retry_after_while_queued(
    idle_client: TestClient, h2_input: str
) -> None:
    job_id = submit(idle_client, h2_input).json()["job_id"]
    first = idle_client.get(f"/calc/zpe/jobs/{job_id}")
    assert first.status_code == 200
    assert first.json()["state"] == "queued"
    assert first.headers["Retry-After"] == "2"
    etag = first.headers["ETag"]
    cached = idle_client.get(f"/calc/zpe/jobs/{job_id}", headers={"If-None-Match": etag})
    assert cached.status_code == 304
    assert cached.content == b""
    stale = idle_client.get(f"/calc/zpe/jobs/{job_id}", headers={"If-None-Match": '"0"'})
    assert stale.status_code == 200


def test_etag_changes_when_the_job_changes(idle_client: TestClient, h2_input: str) -> None:
    job_id = submit(idle_client, h2_input).json()["job_id"]
    etag = idle_client.get(f"/calc/zpe/jobs/{job_id}").headers["ETag"]
    idle_client.post(f"/calc/zpe/jobs/{job_id}/cancel")
    after = idle_client.get(f"/calc/zpe/jobs/{job_id}", headers={"If-None-Match": etag})
    assert after.status_code == 200
    assert after.json()["state"] == "cancelled"
    assert "Retry-After" not in after.headers


def test_progress_and_etag_move_with_each_task_without_writing_the_job(
    idle_client: TestClient, h2_input: str
) -> None:
    """A task's outcome is a done marker, not a write of the job's record: the status
    still counts it, and its ETag still changes (the record's revision does not)."""
    from zpe_core.jobs.runner import run_task

    job_id = submit(idle_client, h2_input, symmetry="off").json()["job_id"]
    service = idle_client.app.state.service  # type: ignore[attr-defined]
    url = f"/calc/zpe/jobs/{job_id}"
    first = idle_client.get(url)
    assert first.json()["progress"]["done"] == 0
    tasks = [ref.task_id for ref in service.store.get_job(job_id).value.tasks]
    run_task(service, tasks[0], "w1")  # the first task also starts the job (one write)
    second = idle_client.get(url, headers={"If-None-Match": first.headers["ETag"]})
    assert second.status_code == 200
    assert second.json()["state"] == "running" and second.json()["progress"]["done"] == 1
    rev = service.store.get_job(job_id).rev
    run_task(service, tasks[1], "w1")
    assert service.store.get_job(job_id).rev == rev  # the job's record was not written
    third = idle_client.get(url, headers={"If-None-Match": second.headers["ETag"]})
    assert third.status_code == 200, "the ETag missed a finished task"
    assert third.json()["progress"]["done"] == 2 and third.headers["Retry-After"] == "2"
    again = idle_client.get(url, headers={"If-None-Match": third.headers["ETag"]})
    assert again.status_code == 304
    listed = idle_client.get("/calc/zpe/jobs").json()["jobs"]
    assert [j["progress"]["done"] for j in listed if j["job_id"] == job_id] == [2]


def test_result_and_files_409_until_done(idle_client: TestClient, h2_input: str) -> None:
    job_id = submit(idle_client, h2_input).json()["job_id"]
    body = assert_problem(idle_client.get(f"/calc/zpe/jobs/{job_id}/result"), 409, "job_not_done")
    assert "queued" in body["detail"]
    assert_problem(
        idle_client.get(f"/calc/zpe/jobs/{job_id}/files", params={"kind": "freqs"}),
        409,
        "job_not_done",
    )
    assert_problem(
        idle_client.get(f"/calc/zpe/jobs/{job_id}/files", params={"kind": "pdf"}),
        422,
        "unknown_file_kind",
    )


def test_cancel_of_a_done_job_is_409(client: TestClient, h2_input: str) -> None:
    done_id = submit(client, h2_input).json()["job_id"]
    wait_for(client, done_id)
    assert_problem(client.post(f"/calc/zpe/jobs/{done_id}/cancel"), 409, "job_already_finished")


def test_cancel_is_idempotent(idle_client: TestClient, h2_input: str) -> None:
    job_id = submit(idle_client, h2_input).json()["job_id"]
    first = idle_client.post(f"/calc/zpe/jobs/{job_id}/cancel")
    assert first.status_code == 200 and first.json()["state"] == "cancelled"
    again = idle_client.post(f"/calc/zpe/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json()["state"] == "cancelled"
    assert_problem(idle_client.get(f"/calc/zpe/jobs/{job_id}/result"), 409, "job_not_done")


def test_unknown_and_malformed_job_ids_are_404(client: TestClient) -> None:
    for job_id in ("j" + "0" * 32, "nope", "..%2F..%2Fetc"):
        assert_problem(client.get(f"/calc/zpe/jobs/{job_id}"), 404, "not_found")
    assert_problem(client.get("/calc/zpe/jobs/j00/result"), 404, "not_found")
    assert_problem(client.post("/calc/zpe/jobs/j00/cancel"), 404, "not_found")


def test_list_is_newest_first_and_paginated(idle_client: TestClient, h2_input: str) -> None:
    ids = [submit(idle_client, h2_input, delta=0.01 + i / 1000).json()["job_id"] for i in range(3)]
    page1 = idle_client.get("/calc/zpe/jobs", params={"limit": 2}).json()
    assert [j["job_id"] for j in page1["jobs"]] == ids[::-1][:2]
    assert page1["next_cursor"]
    page2 = idle_client.get(
        "/calc/zpe/jobs", params={"limit": 2, "cursor": page1["next_cursor"]}
    ).json()
    assert [j["job_id"] for j in page2["jobs"]] == [ids[0]]
    assert page2["next_cursor"] is None
    assert_problem(idle_client.get("/calc/zpe/jobs", params={"limit": 0}), 422, "invalid_request")
    assert_problem(
        idle_client.get("/calc/zpe/jobs", params={"cursor": "../x"}), 422, "invalid_input"
    )


def test_bad_input_is_422_naming_the_problem_and_stores_nothing(client: TestClient) -> None:
    body = assert_problem(submit(client, "&control\n/\n"), 422, "missing_namelist")
    assert "SYSTEM" in body["detail"].upper()
    assert body["source"] == "input"
    assert client.get("/calc/zpe/jobs").json()["jobs"] == []


def test_bad_options_are_422(client: TestClient, h2_input: str) -> None:
    assert_problem(submit(client, h2_input, engine="vasp"), 422, "unknown_engine")
    assert_problem(submit(client, h2_input, mobile=[5]), 422, "mobile_out_of_range")
    body = assert_problem(submit(client, h2_input, delta=-1), 422, "invalid_request")
    assert "delta" in body["detail"]
    assert_problem(submit(client, h2_input, colour="red"), 422, "invalid_request")
    assert_problem(
        client.post(
            "/calc/zpe/jobs", content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
        "invalid_request",
    )
    assert client.get("/calc/zpe/jobs").json()["jobs"] == []


def test_oversized_request_is_413(client: TestClient) -> None:
    huge = "x" * (1024 * 1024 + 70 * 1024)
    assert_problem(submit(client, huge), 413, "request_too_large")
    just_over = "! " + "x" * (1024 * 1024)
    assert_problem(submit(client, just_over), 413, "input_too_large")


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_store_outage_is_503_with_reason(client: TestClient, h2_input: str) -> None:
    store = client.app.state.store  # type: ignore[attr-defined]

    def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("redis at 127.0.0.1:1 refused the connection")

    original = store._read, store.ping
    store._read, store.ping = down, down
    try:
        body = assert_problem(client.get("/readyz"), 503, "store_unavailable")
        assert "unavailable" in body["detail"]  # the reason is logged, not answered
        assert "127.0.0.1" not in body["detail"] and "refused" not in body["detail"]
        response = client.get("/calc/zpe/jobs/j" + "0" * 32)
        assert_problem(response, 503, "store_unavailable")
        assert response.headers["Retry-After"]
    finally:
        store._read, store.ping = original
    assert client.get("/readyz").status_code == 200


def test_openapi_is_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/calc/zpe/jobs" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_reconcile_repairs_results_committed_but_never_counted(
    idle_client: TestClient, h2_input: str
) -> None:
    """A worker that committed its results and died before telling the job: the
    commits counted them (their done markers), and the periodic reconcile finishes the
    job nobody was elected to finish."""
    from zpe_core.jobs.compute import compute_task
    from zpe_core.jobs.service import JobService

    service: JobService = idle_client.app.state.service  # type: ignore[attr-defined]
    job_id = submit(idle_client, h2_input).json()["job_id"]
    job = service.store.get_job(job_id)
    assert job is not None
    for ref in job.value.tasks:
        task = service.store.claim_task(ref.task_id, "w-dies", 60.0)
        assert task is not None
        result = compute_task(task.spec, service.settings)
        service.store.commit_result(task.task_id, task.epoch, result)
    waiting = idle_client.get(f"/calc/zpe/jobs/{job_id}").json()
    assert waiting["state"] != "done" and waiting["progress"]["done"] == 4

    assert service.reconcile(stale_after=0.0) == 0  # nothing left to dispatch
    status = idle_client.get(f"/calc/zpe/jobs/{job_id}").json()
    assert status["state"] == "done"
    assert status["progress"]["done"] == 4
