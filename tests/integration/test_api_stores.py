"""The product unchanged on every shared store: a mock job through the API.

Each backend runs behind the real API app with in-process workers (separate
processes for the file, Redis and GCS stores). Then the store is stopped in
the middle of a job: the API answers 503 with the reason, ``/readyz`` says
so, and once the store is back the job finishes with the same result as an
undisturbed run.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import make_settings, wait_for
from tests.fixtures.servers import GcsServer, RedisServer
from zpe_api.main import create_app

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def _store_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, private store of ``kind`` (its own namespace or prefix)."""
    unique = uuid.uuid4().hex[:12]
    if kind == "file":
        return f"file://{tmp_path / 'store'}"
    if kind == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        return f"{redis.url}?namespace=api-{unique}"
    gcs: GcsServer = request.getfixturevalue("gcs_server")
    return f"gs://{gcs.bucket}/api-{unique}"


def _submit(client: TestClient, text: str, symmetry: str = "auto") -> str:
    body = {"input_text": text, "engine": "mock", "symmetry": symmetry}
    response = client.post("/calc/zpe/jobs", json=body)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["job_id"]
    return job_id


@pytest.mark.parametrize("kind", ["file", "redis", "gcs"])
def test_mock_job_end_to_end_on_each_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = make_settings(store_url=_store_url(kind, request, tmp_path))
    text = (SAMPLES / "h2o_zpe.in").read_text()
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        job_id = _submit(client, text)
        status = wait_for(client, job_id, timeout=120)
        assert status["state"] == "done", status
        assert status["progress"]["done"] == status["progress"]["total"] == 10  # 19 points
        result = client.get(f"/calc/zpe/jobs/{job_id}/result").json()
        assert result["zpe_ev"] > 0
        assert len([m for m in result["modes"] if m["counted"]]) == 3  # H2O: 3N-6
        csv_text = client.get(f"/calc/zpe/jobs/{job_id}/files?kind=freqs").text
        assert csv_text.count("\n") >= 10
        listed = client.get("/calc/zpe/jobs").json()
        assert [item["job_id"] for item in listed["jobs"]] == [job_id]

        # The same input again is served from the content-addressed tasks.
        again = _submit(client, text)
        status = wait_for(client, again, timeout=60)
        assert status["state"] == "done"
        assert status["progress"]["reused"] == 10
        assert client.get(f"/calc/zpe/jobs/{again}/result").json()["zpe_ev"] == result["zpe_ev"]


def _assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "store_unavailable"
    assert "unavailable" in body["detail"]


@pytest.mark.parametrize("kind", ["redis", "gcs"])
def test_store_outage_mid_run_answers_503_then_recovers(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server: RedisServer | GcsServer = request.getfixturevalue(f"{kind}_server")
    settings = make_settings(
        store_url=_store_url(kind, request, tmp_path),
        mock_delay_seconds=0.4,
        lease_seconds=3.0,
        heartbeat_seconds=1.0,
        backoff_base_seconds=0.5,
        backoff_cap_seconds=1.0,
        retry_max=5,
    )
    text = (SAMPLES / "h2_zpe.in").read_text()
    with TestClient(create_app(settings)) as client:
        other = text.replace("4.625000", "4.630000")
        reference = wait_for(client, _submit(client, other), timeout=120)
        assert reference["state"] == "done"

        job_id = _submit(client, text, symmetry="off")  # 13 tasks: some in flight in the outage
        deadline = time.monotonic() + 30
        while client.get(f"/calc/zpe/jobs/{job_id}").json()["progress"]["done"] < 2:
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)

        server.stop()
        try:
            _assert_unavailable(client.get(f"/calc/zpe/jobs/{job_id}"))
            _assert_unavailable(client.get("/readyz"))
            _assert_unavailable(client.post("/calc/zpe/jobs", json={"input_text": text}))
            time.sleep(2.0)  # tasks in flight try to commit while the store is down
        finally:
            server.start()

        recovered_at = time.monotonic()
        assert client.get("/readyz").status_code == 200
        status = wait_for(client, job_id, timeout=120)
        waited = time.monotonic() - recovered_at
        assert status["state"] == "done", status
        assert status["progress"]["done"] == status["progress"]["total"] == 13
        print(f"{kind}: job finished {waited:.1f} s after the store came back")
        listed = client.get("/calc/zpe/jobs").json()["jobs"]
        assert {item["job_id"] for item in listed} == {job_id, reference["job_id"]}
