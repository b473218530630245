"""CloudTasksDispatcher: settings, task shape and names, retries, failures, reconciler.

The task shape, the reconciler and an unreachable queue run against the real
emulator or a closed port; only the Cloud Tasks error paths the emulator
cannot produce (AlreadyExists, transient then success) use a stand-in client.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from pydantic import SecretStr

from tests.fixtures.cloud_tasks import TasksEmulator
from tests.fixtures.servers import free_port
from zpe_client.models import JobRequest, JobState, TaskSpec, TaskState
from zpe_core.dispatch.cloud_tasks import (
    CloudTasksDispatcher,
    task_id_of,
    task_name,
    validate_settings,
)
from zpe_core.errors import ConfigurationError, DispatchError
from zpe_core.jobs.models import Task, now
from zpe_core.jobs.service import JobService
from zpe_core.settings import Settings
from zpe_core.store import open_store

SAMPLES = Path(__file__).resolve().parents[3] / "samples"
QUEUE = "projects/p/locations/l/queues/zpe"
SPEC = TaskSpec(
    engine="mock",
    engine_version="mock-1",
    symbols=["H", "H"],
    positions=[[0, 0, 0], [0, 0, 0.74]],
    cell=[[10, 0, 0], [0, 10, 0], [0, 0, 10]],
    pbc=[False, False, False],
)


def _settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "store_url": "memory://",
        "execution_mode": "cloud-tasks",
        "default_engine": "mock",
        "tasks_queue": QUEUE,
        "worker_url": "https://worker.example.run.app/",
        "worker_audience": "https://worker.example.run.app",
        "tasks_invoker_email": "invoker@p.iam.gserviceaccount.com",
    }
    return Settings(**(base | overrides))


class StandInClient:
    """Answers ``create_task`` from a script of exceptions (None: success)."""

    def __init__(self, script: list[Exception | None]) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []

    def create_task(self, request: dict[str, Any], timeout: float) -> None:
        self.requests.append(request)
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("tasks_queue", "ZPE_TASKS_QUEUE"),
        ("worker_url", "ZPE_WORKER_URL"),
        ("worker_audience", "ZPE_WORKER_AUDIENCE"),
        ("tasks_invoker_email", "ZPE_TASKS_INVOKER_EMAIL"),
    ],
)
def test_start_up_names_the_missing_setting(missing: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        validate_settings(_settings(**{missing: None}))


def test_start_up_checks_formats_and_emulator_auth() -> None:
    with pytest.raises(ConfigurationError, match="not a queue path"):
        validate_settings(_settings(tasks_queue="zpe-queue"))
    with pytest.raises(ConfigurationError, match="http"):
        validate_settings(_settings(worker_url="worker:8080"))
    emulator = {"tasks_emulator_host": "127.0.0.1:1", "tasks_invoker_email": None}
    with pytest.raises(ConfigurationError, match="ZPE_PUSH_SHARED_SECRET"):
        validate_settings(_settings(**emulator, worker_audience=None))
    validate_settings(_settings(**emulator, push_shared_secret=SecretStr("x" * 20)))


def test_names_are_deterministic_per_dispatch_state() -> None:
    task = Task(task_id="t" + "ab" * 32, spec=SPEC)
    assert task_name(task) == task.task_id + "-0-0"
    assert task_name(task.model_copy()) == task_name(task)
    retried = task.model_copy(update={"attempts": 1, "epoch": 1})
    released = task.model_copy(update={"epoch": 1})
    assert len({task_name(task), task_name(retried), task_name(released)}) == 3
    assert task_id_of(f"{QUEUE}/tasks/{task_name(retried)}") == task.task_id


def test_already_exists_is_success_and_transient_errors_are_retried() -> None:
    task = Task(task_id="t1", spec=SPEC)
    client = StandInClient([gexc.AlreadyExists("dup")])
    CloudTasksDispatcher(_settings(), client=client).dispatch([task])
    assert len(client.requests) == 1
    flaky = StandInClient([gexc.ServiceUnavailable("x"), gexc.DeadlineExceeded("y"), None])
    sleeps: list[float] = []
    CloudTasksDispatcher(_settings(), client=flaky, sleep=sleeps.append).dispatch([task])
    assert len(flaky.requests) == 3 and len(sleeps) == 2 and sleeps[1] > sleeps[0] / 2
    assert flaky.requests[0] == flaky.requests[2]  # the same name: a retry cannot duplicate


def test_persistent_or_permanent_errors_raise_dispatch_error() -> None:
    task = Task(task_id="t1", spec=SPEC)
    down = StandInClient([gexc.ServiceUnavailable("down")] * 10)
    dispatcher = CloudTasksDispatcher(_settings(), client=down, attempts=3, sleep=lambda _: None)
    with pytest.raises(DispatchError, match="unavailable after 3 attempts"):
        dispatcher.dispatch([task])
    assert len(down.requests) == 3
    denied = StandInClient([gexc.PermissionDenied("no")])
    with pytest.raises(DispatchError, match="refused"):
        CloudTasksDispatcher(_settings(), client=denied, sleep=lambda _: None).dispatch([task])
    assert len(denied.requests) == 1


def test_unreachable_queue_fails_the_job_with_the_reason() -> None:
    settings = _settings(
        tasks_emulator_host=f"127.0.0.1:{free_port()}",  # nobody listens
        push_shared_secret=SecretStr("x" * 20),
    )
    store = open_store("memory://")
    service = JobService(
        store, CloudTasksDispatcher(settings, attempts=2, backoff_seconds=0.01), settings
    )
    h2 = (SAMPLES / "h2_zpe.in").read_text()
    job, _ = service.submit(JobRequest(input_text=h2, engine="mock"), owner="o")
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.code == "dispatch_failed"
    assert "Cloud Tasks unavailable" in job.error.message


def test_created_task_carries_oidc_secret_body_and_schedule(tasks_emulator: TasksEmulator) -> None:
    queue = tasks_emulator.create_queue()
    client = tasks_emulator.client()
    client.pause_queue(request={"name": queue})  # keep the tasks in the queue to look at
    settings = _settings(
        tasks_queue=queue,
        tasks_emulator_host=tasks_emulator.host,
        push_shared_secret=SecretStr("secret-for-the-emulator"),
        task_timeout_seconds=100.0,
    )
    dispatcher = CloudTasksDispatcher(settings, client=client)
    due = Task(task_id="tdue", spec=SPEC)
    later = Task(task_id="tlater", spec=SPEC, attempts=1, epoch=1, ready_at=now() + 3600)
    dispatcher.dispatch([due, later])
    listed = {
        t.name.rsplit("/", 1)[-1]: t
        for t in client.list_tasks(request={"parent": queue, "response_view": 2})
    }
    assert set(listed) == {"tdue-0-0", "tlater-1-1"}
    request = listed["tdue-0-0"].http_request
    assert request.url == "https://worker.example.run.app/internal/tasks/run"
    assert json.loads(request.body) == {"task_id": "tdue"}
    assert request.headers["X-ZPE-Push-Secret"] == "secret-for-the-emulator"
    assert request.oidc_token.service_account_email == "invoker@p.iam.gserviceaccount.com"
    assert request.oidc_token.audience == "https://worker.example.run.app"
    assert abs(listed["tlater-1-1"].schedule_time.timestamp() - later.ready_at) < 1
    assert listed["tdue-0-0"].dispatch_deadline.total_seconds() == 160


def test_reconciler_redispatches_lost_tasks_and_ends_undeliverable_ones(
    tasks_emulator: TasksEmulator,
) -> None:
    queue = tasks_emulator.create_queue()
    client = tasks_emulator.client()
    client.pause_queue(request={"name": queue})
    settings = _settings(
        tasks_queue=queue,
        tasks_emulator_host=tasks_emulator.host,
        push_shared_secret=SecretStr("secret-for-the-emulator"),
        redispatch_after_seconds=60.0,
        retry_max=3,
    )
    store = open_store("memory://")
    h2 = (SAMPLES / "h2_zpe.in").read_text()
    # Submitted without a dispatcher: the dispatches are "lost".
    job, _ = JobService(store, None, settings).submit(
        JobRequest(input_text=h2, engine="mock", mobile=[1]), owner="o"
    )
    service = JobService(store, CloudTasksDispatcher(settings, client=client), settings)
    task_ids = sorted({ref.task_id for ref in job.tasks})

    def names() -> set[str]:
        return {t.name.rsplit("/", 1)[-1] for t in client.list_tasks(request={"parent": queue})}

    def later() -> float:  # two minutes from now: past the re-dispatch deadline
        return now() + 120

    assert service.redispatch_lost() == 0  # nothing has waited long enough yet
    assert service.redispatch_lost(at=later()) == len(task_ids)
    assert names() == {f"{task_id}-1-0" for task_id in task_ids}
    first = store.get_task(task_ids[0]).value
    assert first.error is not None
    assert (first.state, first.attempts, first.error.code) == (TaskState.QUEUED, 1, "delivery_lost")
    # The one retry rule, backoff included (backoff(1) is 5-10 s at the default 10 s base):
    # the queue holds the new Cloud Task until then.
    assert first.updated_at + 4.9 <= first.ready_at <= first.updated_at + 10
    listed = {t.name.rsplit("/", 1)[-1]: t for t in client.list_tasks(request={"parent": queue})}
    assert abs(listed[f"{task_ids[0]}-1-0"].schedule_time.timestamp() - first.ready_at) < 1

    # Still in the queue (a backlog, not a loss): left alone however long it waits.
    assert service.redispatch_lost(at=later()) == 0
    assert store.get_task(task_ids[0]).value.attempts == 1

    # Lost again and again: after retry_max attempts it is a dead letter, the job fails.
    for _ in range(2):
        client.purge_queue(request={"name": queue})
        service.redispatch_lost(at=later())
    failed = store.get_task(task_ids[0]).value
    assert (failed.state, failed.dead_letter, failed.attempts) == (TaskState.FAILED, True, 3)
    final = store.get_job(job.job_id).value
    assert final.state is JobState.FAILED and final.error is not None
    assert final.error.code == "delivery_lost" and "authentication" in final.error.message
    assert not store.queued_before(later())  # stale markers were cleaned up on the way
