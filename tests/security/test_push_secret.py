"""Attack: use the push worker's shared secret outside the local emulator.

Before the fix ``ZPE_PUSH_SHARED_SECRET`` opened the worker to anyone holding
it, wherever it ran (next to OIDC in production too), and the API copied it
into the headers of every Cloud Task it created, real queue included (where
anyone who may view tasks reads it). Now the secret is accepted only next to a
Cloud Tasks emulator on loopback (``ZPE_TASKS_EMULATOR_HOST``), by a worker
listening on loopback, from a loopback peer; the API refuses it otherwise and
never puts it in a real task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.api.conftest import make_settings
from zpe_client.models import JobRequest, TaskState
from zpe_core.dispatch.cloud_tasks import SECRET_HEADER, CloudTasksDispatcher
from zpe_core.errors import ConfigurationError
from zpe_core.jobs.service import JobService
from zpe_core.store import open_store
from zpe_worker import cli as worker_cli
from zpe_worker.app import create_app as create_worker_app
from zpe_worker.serve import serve

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SECRET = "push-secret-for-the-security-suite-0123"
QUEUE = "projects/p/locations/l/queues/q"


def _worker_settings(**overrides: Any) -> Any:
    base: dict[str, Any] = {
        "push_shared_secret": SecretStr(SECRET),
        "tasks_emulator_host": "127.0.0.1:8123",
    }
    return make_settings(**(base | overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        {"tasks_emulator_host": None},
        {"tasks_emulator_host": "tasks-emulator.internal:8123"},
        {"tasks_emulator_host": "10.0.0.7:8123"},
        # OIDC configured as in production, and a secret "just in case": refused too.
        {
            "tasks_emulator_host": None,
            "worker_audience": "https://w.run.app",
            "tasks_invoker_email": "t@p.iam.gserviceaccount.com",
        },
    ],
    ids=["no-emulator", "emulator-by-name", "emulator-off-machine", "next-to-oidc"],
)
def test_secret_away_from_a_local_emulator_is_refused(overrides: dict[str, Any]) -> None:
    settings = _worker_settings(**overrides)
    with pytest.raises(ConfigurationError, match="ZPE_TASKS_EMULATOR_HOST"):
        create_worker_app(settings)
    api_settings = settings.model_copy(
        update={"tasks_queue": QUEUE, "worker_url": "http://127.0.0.1:8081"}
    )
    with pytest.raises(ConfigurationError, match="ZPE_TASKS_EMULATOR_HOST"):
        CloudTasksDispatcher(api_settings, client=object())


def test_worker_with_the_secret_listens_on_loopback_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigurationError, match=r"--host 0\.0\.0\.0 is refused"):
        serve("0.0.0.0", 1, _worker_settings())
    monkeypatch.setenv("ZPE_PUSH_SHARED_SECRET", SECRET)
    monkeypatch.setenv("ZPE_TASKS_EMULATOR_HOST", "127.0.0.1:8123")
    monkeypatch.setenv("ZPE_STORE_URL", "memory://")
    assert worker_cli.main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2  # the default
    assert "loopback only" in capsys.readouterr().err


def test_secret_from_another_machine_runs_nothing() -> None:
    app = create_worker_app(_worker_settings())
    with (
        TestClient(app, client=("203.0.113.9", 40000)) as remote,
        TestClient(app, client=("127.0.0.1", 40000)) as local,
    ):
        service = app.state.service
        text = (SAMPLES / "h2_zpe.in").read_text()
        job, _ = service.submit(JobRequest(input_text=text, engine="mock"), owner="alice")
        task_id = job.tasks[0].task_id
        body = {"task_id": task_id}
        answer = remote.post("/internal/tasks/run", json=body, headers={SECRET_HEADER: SECRET})
        assert (answer.status_code, answer.json()["code"]) == (401, "secret_not_allowed")
        task = service.store.get_task(task_id).value
        assert (task.state, task.attempts) == (TaskState.QUEUED, 0)
        answer = local.post("/internal/tasks/run", json=body, headers={SECRET_HEADER: SECRET})
        assert answer.status_code == 200 and answer.json()["outcome"] == "committed"


def test_real_cloud_tasks_never_carry_the_secret() -> None:
    production = make_settings(
        tasks_queue=QUEUE,
        worker_url="https://w.run.app",
        worker_audience="https://w.run.app",
        tasks_invoker_email="t@p.iam.gserviceaccount.com",
        execution_mode="cloud-tasks",
    )
    service_store = open_store("memory://")
    service = JobService(service_store, None, production)
    job, _ = service.submit(
        JobRequest(input_text=(SAMPLES / "h2_zpe.in").read_text(), engine="mock"), owner="a"
    )
    task = service_store.get_task(job.tasks[0].task_id).value
    request = CloudTasksDispatcher(production, client=object()).build_request(task)
    http = request["task"]["http_request"]
    assert SECRET_HEADER not in http["headers"] and "oidc_token" in http
    # Next to the local emulator the secret stands in for the OIDC token.
    local = production.model_copy(
        update={
            "tasks_emulator_host": "127.0.0.1:8123",
            "push_shared_secret": SecretStr(SECRET),
            "tasks_invoker_email": None,
        }
    )
    http = CloudTasksDispatcher(local, client=object()).build_request(task)["task"]["http_request"]
    assert http["headers"][SECRET_HEADER] == SECRET
