"""One job must not starve every pull worker, and users name only targets they may use.

The attack: a job of 385 tasks (64 mobile atoms) for a target no worker serves, or
for an engine version no worker has, submitted just before a normal job. With one
ready queue scanned 200 markers at a time, every lease saw only the big job's
markers, rejected them all and answered 204, forever. Ready markers now live in
lanes (target x engine version) and a worker reads only the lanes it serves.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.api.conftest import SAMPLES, make_settings
from tests.api.test_pull_api import ADMIN, Server, pull_settings
from tests.api.test_users_access import ADMIN as USERS_ADMIN
from tests.api.test_users_access import bearer, issue
from zpe_api.main import create_app

H2 = (SAMPLES / "h2_zpe.in").read_text()


def many_atoms_input(n: int = 64) -> str:
    """A pw.x input with ``n`` H atoms on a 4 x 4 x 4 grid, 2 A apart (every atom mobile)."""
    positions = "\n".join(
        f"  H  {2.0 * i + 1:.3f}  {2.0 * j + 1:.3f}  {2.0 * k + 1:.3f}"
        for i, j, k in itertools.islice(itertools.product(range(4), repeat=3), n)
    )
    return (
        "&CONTROL\n  calculation = 'scf'\n/\n"
        f"&SYSTEM\n  ibrav = 0\n  nat = {n}\n  ntyp = 1\n  ecutwfc = 30.0\n/\n"
        "&ELECTRONS\n/\n"
        "ATOMIC_SPECIES\n  H  1.00794  H.pbe-kjpaw.UPF\n"
        "CELL_PARAMETERS angstrom\n  8.0 0.0 0.0\n  0.0 8.0 0.0\n  0.0 0.0 8.0\n"
        f"ATOMIC_POSITIONS angstrom\n{positions}\nK_POINTS gamma\n"
    )


def submit(client: TestClient, text: str, **extra: Any) -> str:
    response = client.post("/calc/zpe/jobs", json={"input_text": text, **extra})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["job_id"]
    return job_id


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = pull_settings(targets="default,gpu", qe_version="qe-7.2")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    "blocker",
    [
        pytest.param({"engine": "mock", "target": "gpu"}, id="unserved-target"),
        pytest.param({"engine": "qe"}, id="engine-no-worker-has"),
    ],
)
def test_a_385_task_job_nobody_can_run_does_not_block_a_normal_job(
    client: TestClient, blocker: dict[str, Any]
) -> None:
    big = submit(client, many_atoms_input(64), symmetry="off", **blocker)
    big_status = client.get(f"/calc/zpe/jobs/{big}").json()
    assert big_status["progress"]["total"] == 385
    normal = submit(client, H2, engine="mock", symmetry="off")
    server = Server(client)  # target "default", mock engine only

    grant = server.lease()
    assert grant is not None, "the worker was starved by a job it cannot run"
    assert grant["job_ids"] == [normal]
    assert server.result(grant).status_code == 200
    assert server.run_all() == 12  # the rest of the normal job, nothing of the big one
    assert client.get(f"/calc/zpe/jobs/{normal}").json()["state"] == "done"
    assert client.get(f"/calc/zpe/jobs/{big}/tasks").json()["states"] == {"queued": 385}


def test_a_job_names_only_a_target_that_exists(client: TestClient) -> None:
    refused = client.post("/calc/zpe/jobs", json={"input_text": H2, "target": "nowhere"})
    assert refused.status_code == 422
    body = refused.json()
    assert body["code"] == "target_unavailable"
    assert "nowhere" in body["detail"] and "default, gpu" in body["detail"]
    assert client.get("/calc/zpe/jobs").json()["jobs"] == []  # nothing stored

    # A target exists while a registered compute server serves it.
    server = Server(client, name="hpc", targets=["hpc-b"])
    job_id = submit(client, H2, engine="mock", target="hpc-b", symmetry="off")
    assert server.run_all() == 13
    revoked = client.delete(f"/calc/zpe/compute/servers/{server.server_id}", headers=bearer(ADMIN))
    assert revoked.status_code == 200, revoked.text
    again = client.post("/calc/zpe/jobs", json={"input_text": H2, "target": "hpc-b"})
    assert again.status_code == 422 and again.json()["code"] == "target_unavailable"
    assert client.get(f"/calc/zpe/jobs/{job_id}").json()["state"] == "done"


def test_a_target_closed_to_an_owner_answers_like_one_that_does_not_exist() -> None:
    settings = make_settings(
        auth_mode="api-keys",
        admin_token=SecretStr(USERS_ADMIN),
        execution_mode="http-pull",
        targets="default,gpu",
        target_owners={"gpu": ["alice"]},
    )
    with TestClient(create_app(settings)) as client:
        alice = bearer(issue(client, "alice")["key"])
        bob = bearer(issue(client, "bob")["key"])
        body = {"input_text": H2, "engine": "mock", "target": "gpu"}
        assert client.post("/calc/zpe/jobs", json=body, headers=alice).status_code == 201
        closed = client.post("/calc/zpe/jobs", json=body, headers=bob)
        absent = client.post("/calc/zpe/jobs", json={**body, "target": "gpx"}, headers=bob)
        assert closed.status_code == absent.status_code == 422
        assert closed.json()["code"] == absent.json()["code"] == "target_unavailable"
        assert closed.json()["detail"].replace("'gpu'", "'gpx'") == absent.json()["detail"]
        assert "gpu" not in closed.json()["detail"].replace("'gpu'", "")
        assert client.get("/calc/zpe/jobs", headers=bob).json()["jobs"] == []
