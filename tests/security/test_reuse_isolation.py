"""One owner learns nothing about another owner's tasks (``ZPE_REUSE_SCOPE=owner``).

The attack: with content-addressed tasks shared by everyone, user B submits a
structure and reads ``progress.reused`` (or ``GET /jobs/{id}/tasks``, or the
timings: a reused job is done at once): if it is not 0, someone already computed
that confidential structure. With the owner scope (the default once users
authenticate) B's job runs its own tasks, and every answer B gets is the same
whether A ever submitted the structure or not.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.api.conftest import SAMPLES, make_settings, wait_for
from tests.api.test_pull_api import Server, pull_settings
from tests.api.test_pull_api import admin as pull_admin
from tests.api.test_reuse import EngineRuns, engine_runs  # noqa: F401 - fixture
from tests.api.test_users_access import ADMIN, bearer, issue
from tests.unit.jobs.test_submit_outage import FlakyStore, finish
from zpe_api.main import create_app
from zpe_client.models import JobRequest, JobState
from zpe_core.errors import StoreUnavailable
from zpe_core.jobs.service import JobService
from zpe_core.physics.plan import owner_scope, scoped_task_id, task_key
from zpe_core.settings import Settings

H2O = (SAMPLES / "h2o_zpe.in").read_text()
H2 = (SAMPLES / "h2_zpe.in").read_text()
TIMES = {"created_at", "started_at", "finished_at", "elapsed_seconds"}


def keyed_app(**overrides: Any) -> TestClient:
    settings = make_settings(auth_mode="api-keys", admin_token=SecretStr(ADMIN), **overrides)
    return TestClient(create_app(settings))


def _scrub(value: Any, job_id: str) -> Any:
    """An answer without what differs between any two runs: the job id and clock times."""
    if isinstance(value, dict):
        return {k: _scrub(v, job_id) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [_scrub(v, job_id) for v in value]
    if isinstance(value, str):
        text = value.replace(job_id, "<job>")
        text = re.sub(r"(elapsed\s*: )[\d.]+ s", r"\1<t> s", text)  # summary.txt
        text = re.sub(r'("elapsed_seconds": )[\d.e+-]+', r"\1<t>", text)  # result.json
        return re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d)?", "<time>", text)
    return value


def bobs_answers(client: TestClient, bob: dict[str, str], text: str) -> dict[str, Any]:
    """Everything B can read about the job B submits."""
    created = client.post(
        "/calc/zpe/jobs", json={"input_text": text, "symmetry": "off"}, headers=bob
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    client.headers.update(bob)
    try:
        status = wait_for(client, job_id)
    finally:
        del client.headers["Authorization"]
    base = f"/calc/zpe/jobs/{job_id}"
    answers = {
        "created": created.json(),
        "status": status,
        "tasks": client.get(f"{base}/tasks", headers=bob).json(),
        "result": client.get(f"{base}/result", headers=bob).json(),
        "list": client.get("/calc/zpe/jobs", headers=bob).json(),
    }
    for kind in ("summary", "freqs", "result"):
        answers[f"file:{kind}"] = client.get(f"{base}/files?kind={kind}", headers=bob).text
    # Queued or already running depends on how fast a worker thread starts, not on A;
    # done at once would mean B's job reused A's tasks.
    assert answers["created"].pop("state") in ("queued", "running")
    timings = {k: status[k] for k in TIMES}
    assert all(isinstance(v, float) for v in timings.values()), timings
    assert status["started_at"] >= status["created_at"]
    scrubbed: dict[str, Any] = _scrub(answers, job_id)
    return scrubbed


def test_owner_b_learns_nothing_of_owner_a_having_computed_the_same_input(
    engine_runs: EngineRuns,  # noqa: F811 - fixture
) -> None:
    # World 1: A computed the structure first.
    with keyed_app() as client:
        alice = bearer(issue(client, "alice")["key"])
        bob = bearer(issue(client, "bob")["key"])
        first = client.post(
            "/calc/zpe/jobs", json={"input_text": H2O, "symmetry": "off"}, headers=alice
        ).json()
        client.headers.update(alice)
        assert wait_for(client, first["job_id"])["state"] == "done"
        del client.headers["Authorization"]
        assert engine_runs.count == 19
        after_a = bobs_answers(client, bob, H2O)
        assert engine_runs.count == 38  # B ran its own 19 tasks
        store = client.app.state.store  # type: ignore[attr-defined]
        jobs = {store.get_job(j).value.owner: store.get_job(j).value for j in store.all_job_ids()}
        a_tasks = {ref.task_id for ref in jobs["alice"].tasks}
        b_tasks = {ref.task_id for ref in jobs["bob"].tasks}
        assert a_tasks.isdisjoint(b_tasks)
        for task_id in b_tasks:
            assert store.get_task(task_id).value.subscribers == [jobs["bob"].job_id]
    assert after_a["status"]["progress"] == {"done": 19, "total": 19, "fraction": 1.0, "reused": 0}
    assert after_a["result"]["tasks_reused"] == 0

    # World 2: nobody else ever submitted it. B's answers are the same.
    with keyed_app() as client:
        bob = bearer(issue(client, "bob")["key"])
        alone = bobs_answers(client, bob, H2O)
    assert after_a == alone


def test_a_running_or_failing_job_of_a_leaves_bs_job_untouched() -> None:
    """A pull worker leases A's reference point, then fails it for good: B sees nothing."""
    with TestClient(create_app(pull_settings(auth_mode="api-keys"))) as client:
        keys = {}
        for owner in ("alice", "bob"):
            issued = client.post(
                "/calc/zpe/admin/api-keys", json={"owner": owner}, headers=pull_admin()
            )
            keys[owner] = bearer(issued.json()["key"])
        server = Server(client)
        a_job = client.post(
            "/calc/zpe/jobs", json={"input_text": H2, "symmetry": "off"}, headers=keys["alice"]
        )
        grant = server.lease()
        assert grant is not None and grant["job_ids"] == [a_job.json()["job_id"]]
        b_id = client.post(
            "/calc/zpe/jobs", json={"input_text": H2, "symmetry": "off"}, headers=keys["bob"]
        ).json()["job_id"]
        b_tasks = client.get(f"/calc/zpe/jobs/{b_id}/tasks", headers=keys["bob"]).json()
        assert b_tasks["states"] == {"queued": 13}  # not {"leased": 1, "queued": 12}
        assert server.failed(grant, retryable=False).status_code == 200
        a_status = client.get(f"/calc/zpe/jobs/{a_job.json()['job_id']}", headers=keys["alice"])
        assert a_status.json()["state"] == "failed"
        b_status = client.get(f"/calc/zpe/jobs/{b_id}", headers=keys["bob"]).json()
        assert b_status["state"] == "queued" and b_status["error"] is None
        assert b_status["progress"]["reused"] == 0
        assert server.run_all() == 13  # B's own tasks, B's job finishes
        client.headers.update(keys["bob"])
        assert wait_for(client, b_id)["state"] == "done"


def test_global_scope_keeps_sharing_between_owners(
    engine_runs: EngineRuns,  # noqa: F811 - fixture
) -> None:
    with keyed_app(reuse_scope="global") as client:
        alice = bearer(issue(client, "alice")["key"])
        bob = bearer(issue(client, "bob")["key"])
        for who in (alice, bob):
            job = client.post(
                "/calc/zpe/jobs", json={"input_text": H2O, "symmetry": "off"}, headers=who
            ).json()
            client.headers.update(who)
            status = wait_for(client, job["job_id"])
            del client.headers["Authorization"]
        assert status["progress"]["reused"] == 19
        assert engine_runs.count == 19


@pytest.mark.parametrize(
    "overrides, across",
    [
        ({}, True),  # the embedded single-user default
        ({"auth_mode": "api-keys"}, False),
        ({"trusted_identity_header": "X-Goog-Authenticated-User-Email"}, False),
        ({"auth_mode": "api-keys", "reuse_scope": "global"}, True),
        ({"reuse_scope": "owner"}, False),
    ],
)
def test_default_reuse_scope_follows_the_auth_mode(overrides: dict[str, Any], across: bool) -> None:
    assert Settings(**overrides).reuse_across_owners is across


def test_scoped_ids_keep_the_content_key_and_the_warm_start_reference_consistent() -> None:
    settings = Settings(store_url="memory://", default_engine="mock", allowed_engines="mock")
    service = JobService(FlakyStore(), None, settings)
    request = JobRequest(input_text=H2, symmetry="off")
    _, shared = service.plan(request)
    _, mine = service.plan(request, scope=owner_scope("alice"))
    _, theirs = service.plan(request, scope=owner_scope("bob"))
    for a, b, c in zip(shared.tasks, mine.tasks, theirs.tasks, strict=True):
        assert task_key(a.spec) == task_key(b.spec) == task_key(c.spec) == a.task_id
        assert len({a.task_id, b.task_id, c.task_id}) == 3
        assert scoped_task_id(b.spec) == b.task_id
    for plan in (shared, mine, theirs):
        # The engine recognises the reference by its stored id (engines/qe.py): per owner.
        reference = plan.tasks[0]
        assert {t.spec.reference_key for t in plan.tasks} == {reference.task_id}
        assert scoped_task_id(reference.spec) == reference.spec.reference_key


def test_a_cut_submission_is_repaired_in_its_own_scope() -> None:
    settings = Settings(
        store_url="memory://", default_engine="mock", allowed_engines="mock", reuse_scope="owner"
    )
    store = FlakyStore()
    service = JobService(store, None, settings)
    store.break_after("tasks/", 4)
    with pytest.raises(StoreUnavailable):
        service.submit(JobRequest(input_text=H2, symmetry="off"), owner="alice")
    store.up()
    (job_id,) = store.all_job_ids()
    service.reconcile(stale_after=0.0)
    assert finish(service, job_id) is JobState.DONE
    job = store.get_job(job_id)
    assert job is not None and job.value.reuse_scope == owner_scope("alice")
    assert job.value.tasks[0].task_id != task_key(
        store.get_task(job.value.tasks[0].task_id).value.spec
    )
