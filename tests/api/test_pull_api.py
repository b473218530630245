"""The worker API and the admin API of the http-pull mode, through the real app.

A ``PullHarness`` plays one or more compute servers over HTTP (TestClient):
it enrolls with an enroll token, leases, heartbeats and posts what the real
mock engine computed (``compute_task``), so every check goes through the
same endpoints a ``zpe-worker pull`` process uses.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import make_settings, wait_for
from zpe_api.main import create_app
from zpe_client.models import TaskSpec
from zpe_core.engines.mock import MOCK_VERSION
from zpe_core.jobs.compute import compute_task
from zpe_core.settings import Settings

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
ADMIN = "admin-secret-for-tests-0123456789"
MOCK_CAPS = {"engines": {"mock": MOCK_VERSION}, "cores": 2}


def pull_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "execution_mode": "http-pull",
        "admin_token": ADMIN,
        "lease_seconds": 30.0,
        "reaper_interval_seconds": 0.2,
        "backoff_base_seconds": 0.01,
        "backoff_cap_seconds": 0.02,
        "lease_poll_max_seconds": 1.0,
    }
    base.update(overrides)
    return make_settings(**base)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(pull_settings())) as test_client:
        yield test_client


def admin(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def enroll_token(client: TestClient, **body: Any) -> str:
    response = client.post("/calc/zpe/compute/enroll-tokens", json=body, headers=admin())
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


class Server:
    """One compute server speaking the worker API."""

    def __init__(
        self,
        client: TestClient,
        *,
        name: str = "hpc1",
        targets: list[str] | None = None,
        caps: dict[str, Any] | None = None,
    ) -> None:
        self.client = client
        token = enroll_token(client, targets=targets) if targets else enroll_token(client)
        response = client.post(
            "/calc/zpe/compute/servers",
            json={"name": name, "capabilities": caps or MOCK_CAPS},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 201, response.text
        self.server_id: str = response.json()["server_id"]
        self.token: str = response.json()["worker_token"]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, path: str, body: dict[str, Any], event_id: str | None = None) -> Any:
        headers = dict(self.auth)
        if event_id:
            headers["X-Event-Id"] = event_id
        return self.client.post(f"/calc/zpe/compute{path}", json=body, headers=headers)

    def lease(self, wait: float = 0.0) -> dict[str, Any] | None:
        response = self.post("/tasks/lease", {"wait_seconds": wait})
        if response.status_code == 204:
            return None
        assert response.status_code == 200, response.text
        grant: dict[str, Any] = response.json()
        return grant

    def compute(self, grant: dict[str, Any]) -> dict[str, Any]:
        result = compute_task(TaskSpec.model_validate(grant["spec"]), Settings())
        return result.model_dump(mode="json", exclude={"worker_id"})

    def result(
        self, grant: dict[str, Any], result: dict[str, Any] | None = None, event: str | None = None
    ) -> Any:
        body = {"epoch": grant["epoch"], "lease_id": grant["lease_id"]}
        body["result"] = result if result is not None else self.compute(grant)
        return self.post(f"/tasks/{grant['task_id']}/result", body, event or uuid.uuid4().hex)

    def failed(self, grant: dict[str, Any], *, retryable: bool, event: str | None = None) -> Any:
        body = {
            "epoch": grant["epoch"],
            "lease_id": grant["lease_id"],
            "retryable": retryable,
            "code": "pwx_input_error" if not retryable else "pwx_crashed",
            "reason": "pw.x said no" if not retryable else "node went away",
        }
        return self.post(f"/tasks/{grant['task_id']}/failed", body, event or uuid.uuid4().hex)

    def heartbeat(self, grant: dict[str, Any], epoch: int | None = None) -> Any:
        body = {"epoch": epoch or grant["epoch"], "lease_id": grant["lease_id"]}
        return self.post(f"/tasks/{grant['task_id']}/heartbeat", body)

    def run_all(self, deadline: float = 30.0) -> int:
        """Lease and complete tasks until none is left; returns how many."""
        count = 0
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            grant = self.lease()
            if grant is None:
                return count
            assert self.result(grant).status_code == 200
            count += 1
        raise AssertionError("tasks kept coming")


def submit(client: TestClient, sample: str = "h2_zpe.in", **extra: Any) -> str:
    body = {"input_text": (SAMPLES / sample).read_text(), "engine": "mock", **extra}
    response = client.post("/calc/zpe/jobs", json=body)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def task_of(client: TestClient, task_id: str) -> Any:
    found = client.app.state.store.get_task(task_id)  # type: ignore[attr-defined]
    assert found is not None
    return found.value


# ---------------------------------------------------------------------- admin auth


def test_admin_endpoints_are_closed_without_an_admin_token() -> None:
    with TestClient(create_app(pull_settings(admin_token=None))) as closed:
        for method, path in [
            ("post", "/calc/zpe/compute/enroll-tokens"),
            ("get", "/calc/zpe/compute/servers"),
            ("get", "/calc/zpe/admin/dead-letters"),
            ("get", "/calc/zpe/admin/switches"),
        ]:
            for headers in ({}, admin(), admin("")):
                response = closed.request(method, path, json={}, headers=headers)
                assert response.status_code == 403, (path, response.text)
                assert response.json()["code"] == "admin_disabled"


def test_admin_token_is_required_and_checked(client: TestClient) -> None:
    path = "/calc/zpe/compute/enroll-tokens"
    missing = client.post(path, json={})
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.post(path, json={}, headers=admin(ADMIN + "x")).status_code == 401
    assert client.post(path, json={}, headers={"Authorization": ADMIN}).status_code == 401
    assert client.post(path, json={}, headers=admin()).status_code == 201


# ---------------------------------------------------------------------- enrollment


def _register(client: TestClient, token: str, **body: Any) -> Any:
    payload = {"name": "n1", "capabilities": MOCK_CAPS, **body}
    return client.post(
        "/calc/zpe/compute/servers", json=payload, headers={"Authorization": f"Bearer {token}"}
    )


def test_enroll_tokens_are_single_use_and_stored_hashed(client: TestClient) -> None:
    token = enroll_token(client)
    first = _register(client, token)
    assert first.status_code == 201, first.text
    worker_token = first.json()["worker_token"]
    again = _register(client, token)
    assert again.status_code == 401
    assert again.json()["code"] == "enroll_token_used"
    # Neither token is anywhere in the store in clear text.
    store = client.app.state.store  # type: ignore[attr-defined]
    blobs = b"".join(store._read(f"meta/{key}")[0] for key in store.list_documents(""))
    assert token.encode() not in blobs and worker_token.encode() not in blobs
    assert token.split("_", 3)[3].encode() not in blobs


def test_forged_expired_and_missing_enroll_tokens_are_refused(client: TestClient) -> None:
    token = enroll_token(client)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert _register(client, forged).json()["code"] == "invalid_enroll_token"
    assert _register(client, "zpe_enroll_nothex_" + "x" * 40).status_code == 401
    missing = client.post("/calc/zpe/compute/servers", json={"name": "n1"})
    assert missing.status_code == 401
    short = enroll_token(client, ttl_seconds=0.2)
    time.sleep(0.3)
    expired = _register(client, short)
    assert expired.status_code == 401
    assert expired.json()["code"] == "enroll_token_expired"
    # The forged attempt did not consume the real token.
    assert _register(client, token).status_code == 201


def test_enroll_token_limits_the_targets(client: TestClient) -> None:
    token = enroll_token(client, targets=["hpc-a"])
    refused = _register(client, token, targets=["hpc-b"])
    assert refused.status_code == 403
    assert refused.json()["code"] == "target_not_allowed"
    ok = _register(client, token)  # the refused attempt consumed nothing
    assert ok.status_code == 201 and ok.json()["targets"] == ["hpc-a"]


def test_worker_tokens_forged_revoked_and_renewed(client: TestClient) -> None:
    server = Server(client)
    other = Server(client, name="hpc2")
    lease = "/calc/zpe/compute/tasks/lease"
    assert client.post(lease, json={}).status_code == 401
    forged = server.token[:-3] + ("abc" if not server.token.endswith("abc") else "xyz")
    for bad in (forged, other.token.replace(other.server_id, server.server_id), "nonsense"):
        answer = client.post(lease, json={}, headers={"Authorization": f"Bearer {bad}"})
        assert answer.status_code == 401
        assert answer.json()["code"] == "invalid_token"
    assert client.post(lease, json={}, headers=server.auth).status_code == 204
    # Renewal: a new token works; only for oneself.
    path = f"/calc/zpe/compute/servers/{server.server_id}/token"
    assert client.post(path, headers=other.auth).status_code == 403
    renewed = client.post(path, headers=server.auth)
    assert renewed.status_code == 200
    old_token, server.token = server.token, renewed.json()["worker_token"]
    assert client.post(lease, json={}, headers=server.auth).status_code == 204
    # Revocation is immediate, for the new token and the old one in its grace period.
    revoked = client.delete(f"/calc/zpe/compute/servers/{server.server_id}", headers=admin())
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    for token in (server.token, old_token):
        answer = client.post(lease, json={}, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401
        assert answer.json()["code"] == "server_revoked"
    assert client.post(lease, json={}, headers=other.auth).status_code == 204


def test_expired_worker_token_is_refused() -> None:
    with TestClient(create_app(pull_settings(worker_token_ttl_seconds=0.3))) as client:
        server = Server(client)
        assert server.post("/tasks/lease", {}).status_code == 204
        time.sleep(0.4)
        answer = server.post("/tasks/lease", {})
        assert answer.status_code == 401
        assert answer.json()["code"] == "token_expired"


# ---------------------------------------------------------------------- leases


def test_pull_servers_complete_a_job_and_are_listed(client: TestClient) -> None:
    job_id = submit(client)
    a, b = Server(client, name="a"), Server(client, name="b")
    grant = a.lease()
    assert grant is not None and grant["epoch"] == 1 and grant["job_ids"] == [job_id]
    assert client.get(f"/calc/zpe/jobs/{job_id}").json()["state"] == "running"
    listed = client.get("/calc/zpe/compute/servers", headers=admin()).json()["servers"]
    running = {s["name"]: s["running"] for s in listed}
    assert running == {"a": {grant["task_id"]: 1}, "b": {}}
    assert all(s["last_seen_at"] is not None for s in listed)
    assert a.heartbeat(grant).status_code == 200
    assert a.result(grant).status_code == 200
    assert b.run_all() == 3  # H2: 1 + 3 of the 12 displacements (symmetry rebuilds 9)
    status = wait_for(client, job_id)
    assert status["state"] == "done"
    result = client.get(f"/calc/zpe/jobs/{job_id}/result").json()
    # The same answer as the embedded in-process mode gives.
    with TestClient(create_app(make_settings())) as embedded:
        reference_id = submit(embedded)
        assert wait_for(embedded, reference_id)["state"] == "done"
        reference = embedded.get(f"/calc/zpe/jobs/{reference_id}/result").json()
    assert result["freqs_cm"] == pytest.approx(reference["freqs_cm"], abs=1e-9)
    assert result["zpe_ev"] == pytest.approx(reference["zpe_ev"], abs=1e-12)
    listed = client.get("/calc/zpe/compute/servers", headers=admin()).json()["servers"]
    assert {s["name"]: s["tasks_done"] for s in listed} == {"a": 1, "b": 3}


def test_lease_honours_targets_and_engine_versions(client: TestClient) -> None:
    default = Server(client, name="default")
    old_engine = Server(client, name="old", targets=["hpc-b"], caps={"engines": {"mock": "m0"}})
    no_engine = Server(client, name="none", targets=["hpc-b"], caps={"engines": {"qe": "qe-7"}})
    job_id = submit(client, target="hpc-b")  # a target must be served (or configured)
    for server in (default, old_engine, no_engine):
        assert server.lease() is None
    right = Server(client, name="right", targets=["hpc-b", "default"])
    assert right.run_all() == 4
    assert wait_for(client, job_id)["state"] == "done"


def test_long_poll_waits_and_returns_a_task_submitted_meanwhile(client: TestClient) -> None:
    server = Server(client)
    started = time.monotonic()
    assert server.lease(wait=0.6) is None
    assert time.monotonic() - started >= 0.5
    submit(client)
    assert server.lease(wait=5) is not None


def test_stale_epoch_and_other_servers_get_409_and_change_nothing() -> None:
    settings = pull_settings(lease_seconds=0.5, reaper_interval_seconds=0.1)
    with TestClient(create_app(settings)) as client:
        # Every point (13): the other tasks keep the second server busy while the reaper
        # re-queues the expired one, as before symmetry-reduced plans.
        submit(client, symmetry="off")
        first, second = Server(client, name="first"), Server(client, name="second")
        grant = first.lease()
        assert grant is not None
        task_id = grant["task_id"]
        # Another server cannot act on the first one's lease, even knowing epoch and lease id.
        for call in (
            second.heartbeat(grant),
            second.result(grant),
            second.failed(grant, retryable=True),
        ):
            assert call.status_code == 409, call.text
        assert task_of(client, task_id).lease.worker_id == first.server_id
        time.sleep(0.6)  # the lease expires; the next lease takes the task at epoch 2
        regrant = None
        while regrant is None or regrant["task_id"] != task_id:
            regrant = second.lease(wait=1.0)  # the reaper re-queues it after a short backoff
            assert regrant is not None
        assert regrant["epoch"] == 2
        computed = first.compute(grant)
        late = [
            first.heartbeat(grant),
            first.result(grant, computed),
            first.failed(grant, retryable=False),
        ]
        assert [r.status_code for r in late] == [409, 409, 409]
        assert all(r.json()["code"] == "stale_lease" for r in late)
        task = task_of(client, task_id)
        assert task.state.value == "leased" and task.lease.epoch == 2 and task.result is None
        assert second.result(regrant).status_code == 200
        committed = task_of(client, task_id)
        assert committed.state.value == "done" and committed.result.worker_id == second.server_id
        # The late result still cannot overwrite it.
        assert first.result(grant, computed).status_code == 409
        assert task_of(client, task_id).result == committed.result


def test_repeated_result_and_failure_are_answered_the_same(client: TestClient) -> None:
    submit(client)
    server = Server(client)
    grant = server.lease()
    assert grant is not None
    computed = server.compute(grant)
    first = server.result(grant, computed, event="evt-result-0001")
    again = server.result(grant, computed, event="evt-result-0001")
    assert first.status_code == again.status_code == 200
    assert (
        first.json()
        == again.json()
        == {
            "task_id": grant["task_id"],
            "state": "done",
            "committed": True,
        }
    )
    other = dict(computed, energy_ev=computed["energy_ev"] + 1.0)
    reused = server.result(grant, other, event="evt-result-0001")
    assert reused.status_code == 409 and reused.json()["code"] == "event_id_reused"
    # Failures: a retried report counts one attempt, not two.
    failing = server.lease()
    assert failing is not None
    one = server.failed(failing, retryable=True, event="evt-failed-0001")
    two = server.failed(failing, retryable=True, event="evt-failed-0001")
    assert one.status_code == two.status_code == 200
    assert one.json() == two.json()
    assert task_of(client, failing["task_id"]).attempts == 1
    # A stale report is refused, and its repeat is refused the same way.
    stale1 = server.failed(failing, retryable=True, event="evt-failed-0002")
    stale2 = server.failed(failing, retryable=True, event="evt-failed-0002")
    assert stale1.status_code == stale2.status_code == 409
    assert stale1.json()["detail"] == stale2.json()["detail"]
    missing = server.post(
        f"/tasks/{failing['task_id']}/result",
        {"epoch": 1, "lease_id": "x", "result": computed},
    )
    assert missing.status_code == 422 and missing.json()["code"] == "event_id_required"


def test_results_are_validated_on_submission() -> None:
    with TestClient(create_app(pull_settings(max_result_bytes=2000))) as client:
        submit(client)
        server = Server(client)
        grant = server.lease()
        assert grant is not None
        good = server.compute(grant)
        bad_shape = dict(good, forces_ev_per_a=good["forces_ev_per_a"][:1])
        wrong_version = dict(good, engine_version="mock-0")
        template = (
            '{"epoch": %d, "lease_id": "%s", "result": {"energy_ev": %s, '
            '"forces_ev_per_a": [[%s,0,0],[0,0,0]], "engine": "mock", "engine_version": "%s"}}'
        )

        def raw(energy: str, force: str) -> Any:
            body = template % (grant["epoch"], grant["lease_id"], energy, force, MOCK_VERSION)
            headers = {**server.auth, "Content-Type": "application/json", "X-Event-Id": "e" * 8}
            return client.post(
                f"/calc/zpe/compute/tasks/{grant['task_id']}/result", content=body, headers=headers
            )

        answers = [
            server.result(grant, bad_shape),
            server.result(grant, wrong_version),
            raw("NaN", "0"),
            raw("-1.0", "Infinity"),
            server.result(grant, dict(good, pad=["x"])),
        ]
        codes = [(a.status_code, a.json()["code"]) for a in answers]
        assert codes[:2] == [(422, "result_shape_mismatch"), (422, "result_engine_mismatch")]
        assert codes[2:] == [(422, "invalid_request")] * 3  # non-finite numbers, unknown field
        assert task_of(client, grant["task_id"]).state.value == "leased"  # nothing changed
        assert server.result(grant, good).status_code == 200
        task = task_of(client, grant["task_id"])
        assert task.state.value == "done"


def test_result_size_cap_answers_413() -> None:
    with TestClient(create_app(pull_settings(max_result_bytes=100))) as client:
        submit(client)
        server = Server(client)
        grant = server.lease()
        assert grant is not None
        answer = server.result(grant)
        assert answer.status_code == 413, answer.text
        assert answer.json()["code"] == "result_too_large"
        assert task_of(client, grant["task_id"]).state.value == "leased"


# ---------------------------------------------------------------------- reference densities


def _density(server: Server, grant: dict[str, Any], blob: bytes | None = None) -> Any:
    """GET (or PUT ``blob``) the reference density of the task of ``grant``, under its lease."""
    headers = {
        **server.auth,
        "X-Lease-Epoch": str(grant["epoch"]),
        "X-Lease-Id": grant["lease_id"],
    }
    path = f"/calc/zpe/compute/tasks/{grant['task_id']}/reference-density"
    if blob is None:
        return server.client.get(path, headers=headers)
    return server.client.put(path, content=blob, headers=headers)


def test_reference_density_goes_from_the_reference_worker_to_the_others() -> None:
    with TestClient(create_app(pull_settings(warm_start_share_max_bytes=4096))) as client:
        submit(client)
        first, second = Server(client, name="first"), Server(client, name="second")
        reference, displaced = first.lease(), second.lease()
        assert reference is not None and displaced is not None
        assert reference["spec"]["reference_key"] == reference["task_id"]
        assert displaced["spec"]["reference_key"] == reference["task_id"]
        missing = _density(second, displaced)
        assert missing.status_code == 404 and missing.json()["code"] == "no_reference_density"
        # Only the holder of the reference's lease ships it, within the cap, once.
        wrong_task = _density(second, displaced, b"x")
        assert wrong_task.status_code == 422, wrong_task.text
        assert wrong_task.json()["code"] == "not_a_reference_task"
        assert _density(second, reference, b"x").status_code == 409  # not its lease
        too_big = _density(first, reference, b"x" * 4097)
        assert too_big.status_code == 413 and too_big.json()["code"] in (
            "density_too_large",
            "request_too_large",
        )
        assert _density(first, reference, b"density-1").json() == {
            "task_id": reference["task_id"],
            "stored": True,
        }
        assert _density(first, reference, b"density-2").json()["stored"] is False
        fetched = _density(second, displaced)
        assert fetched.status_code == 200 and fetched.content == b"density-1"
        assert _density(first, reference).status_code == 404  # the reference needs none
        # Fetching needs the current lease of a task that wants this reference.
        assert _density(second, {**displaced, "epoch": displaced["epoch"] + 1}).status_code == 409
        assert _density(first, displaced).status_code == 409
        # After the result is in, the lease is gone: nothing more is shipped or fetched.
        assert first.result(reference).status_code == 200
        assert _density(first, reference, b"density-3").status_code == 409


def test_a_worker_gets_only_the_density_its_own_task_names() -> None:
    with TestClient(create_app(pull_settings())) as client:
        submit(client, "h2_zpe.in")
        server = Server(client)
        reference = server.lease()
        assert reference is not None
        assert _density(server, reference, b"h2-density").json()["stored"] is True
        assert server.result(reference).status_code == 200
        while (grant := server.lease()) is not None:  # the rest of the H2 job
            assert _density(server, grant).content == b"h2-density"
            assert server.result(grant).status_code == 200
        submit(client, "h2o_zpe.in")  # another job, another reference: not H2's density
        grant = server.lease()
        assert grant is not None and grant["spec"]["symbols"] == ["O", "H", "H"]
        assert _density(server, grant).status_code == 404


# ---------------------------------------------------------------------- failures


def test_retryable_failures_back_off_then_dead_letter_and_fail_the_job(client: TestClient) -> None:
    job_id = submit(client)
    server = Server(client)
    grant = server.lease()
    assert grant is not None
    task_id = grant["task_id"]
    ready_times = []
    for attempt in range(1, 4):
        answer = server.failed(grant, retryable=True).json()
        assert answer["attempts"] == attempt
        if attempt < 3:
            assert answer["state"] == "queued" and answer["retry_at"] > time.time() - 1
            ready_times.append(answer["retry_at"])
            grant = None
            deadline = time.monotonic() + 5
            while grant is None or grant["task_id"] != task_id:
                grant = server.lease()
                if grant is not None and grant["task_id"] != task_id:
                    assert server.result(grant).status_code == 200
                assert time.monotonic() < deadline
        else:
            assert answer["state"] == "failed" and answer["dead_letter"] is True
    status = wait_for(client, job_id)
    assert status["state"] == "failed"
    assert status["error"]["code"] == "pwx_crashed"
    assert "after 3 attempt(s): node went away" in status["error"]["message"]
    letters = client.get("/calc/zpe/admin/dead-letters", headers=admin()).json()["dead_letters"]
    assert [d["task_id"] for d in letters] == [task_id]
    history = letters[0]["history"]
    assert [h["outcome"] for h in history] == ["failed"] * 3
    assert all(h["worker_id"] == server.server_id for h in history)
    assert history[0]["error"]["message"] == "node went away"


def test_permanent_failure_dead_letters_at_once_and_requeue_resubmits(client: TestClient) -> None:
    job_id = submit(client)
    server = Server(client)
    grant = server.lease()
    assert grant is not None
    answer = server.failed(grant, retryable=False).json()
    assert answer["state"] == "failed" and answer["attempts"] == 1 and answer["dead_letter"]
    failed = wait_for(client, job_id)
    assert failed["state"] == "failed" and failed["error"]["code"] == "pwx_input_error"
    letters = client.get("/calc/zpe/admin/dead-letters", headers=admin()).json()["dead_letters"]
    assert letters[0]["task_id"] == grant["task_id"] and letters[0]["job_ids"] == [job_id]
    path = f"/calc/zpe/admin/dead-letters/{grant['task_id']}/requeue"
    assert client.post(path).status_code == 401
    requeued = client.post(path, headers=admin())
    assert requeued.status_code == 200, requeued.text
    new_job = requeued.json()["resubmitted_jobs"][job_id]
    assert requeued.json()["state"] == "queued"
    assert client.get("/calc/zpe/admin/dead-letters", headers=admin()).json()["dead_letters"] == []
    assert client.post(path, headers=admin()).json()["code"] == "not_dead_letter"
    server.run_all()
    done = wait_for(client, new_job)
    assert done["state"] == "done"
    assert client.get(f"/calc/zpe/jobs/{job_id}").json()["state"] == "failed"  # never changes


def test_release_and_revocation_requeue_without_counting_an_attempt(client: TestClient) -> None:
    submit(client)
    server = Server(client)
    grant = server.lease()
    assert grant is not None
    body = {"epoch": grant["epoch"], "lease_id": grant["lease_id"]}
    assert server.post(f"/tasks/{grant['task_id']}/release", body).status_code == 200
    task = task_of(client, grant["task_id"])
    assert task.state.value == "queued" and task.attempts == 0
    held = server.lease()
    assert held is not None
    client.delete(f"/calc/zpe/compute/servers/{server.server_id}", headers=admin())
    task = task_of(client, held["task_id"])
    assert task.state.value == "queued" and task.attempts == 0
    assert task.history[-1].outcome == "released"


def test_expired_leases_are_reaped_and_count_attempts() -> None:
    settings = pull_settings(lease_seconds=0.3, retry_max=2)
    with TestClient(create_app(settings)) as client:
        job_id = submit(client)
        server = Server(client)
        first = server.lease()
        assert first is not None
        deadline = time.monotonic() + 10
        while task_of(client, first["task_id"]).attempts < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert task_of(client, first["task_id"]).state.value == "queued"
        while True:  # lease it again and let it expire a second time: attempts exhausted
            grant = server.lease()
            if grant is not None and grant["task_id"] == first["task_id"]:
                break
            if grant is not None:
                server.result(grant)
            assert time.monotonic() < deadline
        status = wait_for(client, job_id)
        assert status["state"] == "failed" and status["error"]["code"] == "lease_expired"


# ---------------------------------------------------------------------- switches


def test_switches_drain_and_stop_submissions_durably(tmp_path: Path) -> None:
    settings = pull_settings(store_url=f"file://{tmp_path / 'store'}")
    with TestClient(create_app(settings)) as client:
        job_id = submit(client)
        server = Server(client)
        running = server.lease()
        assert running is not None
        off = client.put(
            "/calc/zpe/admin/switches",
            json={"dequeue_enabled": False, "actor": "alice", "reason": "maintenance"},
            headers=admin(),
        )
        assert off.status_code == 200 and off.json()["dequeue_enabled"] is False
        assert server.lease() is None  # draining: nothing new starts
        assert server.heartbeat(running).status_code == 200  # running tasks carry on
        assert server.result(running).status_code == 200
        client.put(
            "/calc/zpe/admin/switches",
            json={"submission_enabled": False, "actor": "bob", "reason": "store migration"},
            headers=admin(),
        )
        refused = client.post(
            "/calc/zpe/jobs", json={"input_text": (SAMPLES / "h2_zpe.in").read_text()}
        )
        assert refused.status_code == 503
        assert refused.json()["code"] == "submission_disabled"
        assert "store migration" in refused.json()["detail"]
        assert client.put("/calc/zpe/admin/switches", json={}, headers={}).status_code == 401
    # Durable: a new API process on the same store sees the switches and the audit trail.
    with TestClient(create_app(settings)) as client:
        view = client.get("/calc/zpe/admin/switches", headers=admin()).json()
        assert view["submission_enabled"] is False and view["dequeue_enabled"] is False
        audit = [(e["actor"], e["switch"], e["old"], e["new"], e["reason"]) for e in view["audit"]]
        assert audit == [
            ("bob", "submission_enabled", True, False, "store migration"),
            ("alice", "dequeue_enabled", True, False, "maintenance"),
        ]
        assert all(e["at"] > 0 for e in view["audit"])
        client.put(
            "/calc/zpe/admin/switches",
            json={"submission_enabled": True, "dequeue_enabled": True, "actor": "carol"},
            headers=admin(),
        )
        server = Server(client)
        assert server.run_all() == 3
        assert wait_for(client, job_id)["state"] == "done"
        assert len(client.get("/calc/zpe/admin/switches", headers=admin()).json()["audit"]) == 4


def test_result_post_cut_after_commit_is_repaired_by_the_retry(client: TestClient) -> None:
    """Found by the chaos suite's outage: the store went down after the result was
    committed but before the job counted it. The worker's retry (same event id) was
    answered 409 'lease lost' and the job waited for the next full reconcile (15 min by
    default); now the retry advances the job, committing nothing twice."""
    from zpe_core.errors import StoreUnavailable

    job_id = submit(client, "h2_zpe.in", mobile=[0], delta=0.0127)
    server = Server(client)
    store = client.app.state.store  # type: ignore[attr-defined]
    grant = server.lease()
    assert grant is not None
    computed = server.compute(grant)
    service = client.app.state.service  # type: ignore[attr-defined]
    original = store._create

    def down(key: str, value: bytes) -> int:
        if key.startswith("done/"):
            raise StoreUnavailable("store unavailable (test)")
        return original(key, value)

    # The outage starts right after the task's commit, before its done marker (on a store
    # where they are two writes; Redis writes them in one script).
    store._create = down
    try:
        cut = server.result(grant, computed, event="evt-cut-000001")
    finally:
        store._create = original
    assert cut.status_code == 503, cut.text
    assert task_of(client, grant["task_id"]).state.value == "done"
    assert grant["task_id"] not in service.done_task_ids(store.get_job(job_id).value)
    retry = server.result(grant, computed, event="evt-cut-000001")
    assert retry.status_code == 200, retry.text
    assert retry.json() == {"task_id": grant["task_id"], "state": "done", "committed": False}
    assert grant["task_id"] in service.done_task_ids(store.get_job(job_id).value)
    history = task_of(client, grant["task_id"]).history
    assert [a.outcome for a in history] == ["done"]  # committed once
    server.run_all()
    assert wait_for(client, job_id)["state"] == "done"
