"""Cloud Tasks push, with real processes: the emulator, the API, the worker service, a store.

The API runs in ``cloud-tasks`` mode and enqueues into the emulator, which POSTs
each task to the worker (``zpe-worker serve``); both share a file or Redis
store, which the test also opens to look at tasks. The emulator sends no OIDC
token (the shared secret authenticates), never de-duplicates task names and
retries at once, so duplicates and retries are the normal case here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.cloud_tasks import TasksEmulator
from tests.fixtures.servers import free_port, push_worker_argv, wait_until_up
from zpe_client.models import JobRequest, JobState, TaskState
from zpe_core.dispatch.cloud_tasks import CloudTasksDispatcher
from zpe_core.jobs.models import Job, Task
from zpe_core.jobs.runner import run_task
from zpe_core.jobs.service import JobService
from zpe_core.settings import Settings
from zpe_core.store import JobStore, open_store

pytestmark = pytest.mark.slow

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SECRET = "push-secret-for-the-emulator"
H2 = (SAMPLES / "h2_zpe.in").read_text()


class Proc:
    """A uvicorn service (the API or the worker) as a child process on a fixed port."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, health: str) -> None:
        self.argv, self.env, self.log, self.health = argv, env, log, health
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0, **extra_env: str) -> None:
        # (Imports alone took 70 s on a machine at load 20: start-up time is not under test.)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, env={**self.env, **extra_env}, stdout=log, stderr=subprocess.STDOUT
            )
        wait_until_up(self.health, self.process, log=self.log, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return process.returncode if process else 0
        process.send_signal(sig)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


class Stack:
    """Emulator queue + API process + worker process + the shared store."""

    def __init__(self, emulator: TasksEmulator, store_url: str, workdir: Path) -> None:
        self.emulator = emulator
        self.queue = emulator.create_queue()
        self.store_url = store_url
        self.worker_port, self.api_port = free_port(), free_port()
        self.worker_url = f"http://127.0.0.1:{self.worker_port}"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.env = {
            **os.environ,
            "ZPE_STORE_URL": store_url,
            "ZPE_EXECUTION_MODE": "cloud-tasks",
            "ZPE_DEFAULT_ENGINE": "mock",
            "ZPE_TASKS_QUEUE": self.queue,
            "ZPE_WORKER_URL": self.worker_url,
            "ZPE_TASKS_EMULATOR_HOST": emulator.host,
            "ZPE_PUSH_SHARED_SECRET": SECRET,
            "ZPE_TASKS_MAX_ATTEMPTS": "10",
            "ZPE_RETRY_MAX": "100",  # here Cloud Tasks' attempts are the limit that bites
            "ZPE_LEASE_SECONDS": "3",
            "ZPE_HEARTBEAT_SECONDS": "0.5",
            "ZPE_REAPER_INTERVAL_SECONDS": "0.5",
            "ZPE_BACKOFF_BASE_SECONDS": "0.2",
            "ZPE_BACKOFF_CAP_SECONDS": "0.5",
            "ZPE_REDISPATCH_AFTER_SECONDS": "60",
            "ZPE_MOCK_DELAY_SECONDS": "0.3",  # tasks stay in flight long enough to kill
            "ZPE_LOG_LEVEL": "INFO",
        }
        self.settings = Settings(
            **{k[4:].lower(): v for k, v in self.env.items() if k.startswith("ZPE_")}
        )
        self.worker = Proc(
            push_worker_argv(self.worker_port),
            self.env,
            workdir / "worker.log",
            f"{self.worker_url}/healthz",
        )
        self.api = Proc(
            [sys.executable, "-m", "zpe_api.cli", "serve", "--port", str(self.api_port)],
            self.env,
            workdir / "api.log",
            f"{self.api_url}/healthz",
        )
        self.store: JobStore = open_store(store_url)
        self.client = emulator.client()

    def start(self) -> None:
        self.worker.start()
        self.api.start()

    def close(self) -> None:
        self.api.stop()
        self.worker.stop()
        self.store.close()

    # -------------------------------------------------------------- helpers

    def submit(self, **request: Any) -> str:
        response = httpx.post(
            f"{self.api_url}/calc/zpe/jobs", json={"input_text": H2, **request}, timeout=30
        )
        assert response.status_code in (200, 201), response.text
        job_id: str = response.json()["job_id"]
        return job_id

    def wait_job(self, job_id: str, timeout: float = 60.0) -> Job:
        return wait_for(lambda: _terminal(self.store, job_id), timeout, f"job {job_id}")

    def push(self, task_id: str, **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.worker_url}/internal/tasks/run",
            json={"task_id": task_id},
            headers=headers,
            timeout=60,
        )

    def queued_cloud_tasks(self) -> list[str]:
        return [t.name for t in self.client.list_tasks(request={"parent": self.queue})]

    def local_service(self, **kwargs: Any) -> JobService:
        """A JobService in the test process on the shared store (no dispatcher)."""
        return JobService(self.store, None, self.settings, **kwargs)

    def dispatcher(self) -> CloudTasksDispatcher:
        return CloudTasksDispatcher(self.settings, client=self.client)


def queued_tasks(store: JobStore, job: Job) -> list[Task]:
    """The job's tasks that are still queued (not reused from an earlier job)."""
    tasks = [store.get_task(task_id) for task_id in sorted({ref.task_id for ref in job.tasks})]
    return [t.value for t in tasks if t is not None and t.value.state is TaskState.QUEUED]


def _terminal(store: JobStore, job_id: str) -> Job | None:
    found = store.get_job(job_id)
    return found.value if found and found.value.state.terminal else None


def wait_for(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def reference_zpe(**request: Any) -> float:
    """The same job computed in this process on a memory store (the expected answer)."""
    settings = Settings(store_url="memory://", default_engine="mock")
    service = JobService(open_store("memory://"), None, settings)
    job, _ = service.submit(JobRequest(input_text=H2, **request), owner="ref")
    for task_id in {ref.task_id for ref in job.tasks}:
        run_task(service, task_id, "reference")
    done = service.store.get_job(job.job_id)
    assert done is not None and done.value.summary is not None
    return done.value.summary.zpe_ev


def assert_committed_once_by_the_worker(store: JobStore, job: Job) -> None:
    for task_id in {ref.task_id for ref in job.tasks}:
        task = store.get_task(task_id).value  # type: ignore[union-attr]
        assert task.state is TaskState.DONE
        done = [a for a in task.history if a.outcome == "done"]
        assert len(done) == 1, task.history
        assert task.result is not None and task.result.worker_id is not None
        assert task.result.worker_id.startswith("push-")  # the worker service, not the API


@pytest.fixture(scope="module")
def stack(
    tasks_emulator: TasksEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("push")
    s = Stack(tasks_emulator, f"file://{workdir / 'store'}", workdir)
    s.start()
    yield s
    s.close()


# ---------------------------------------------------------------------- tests


def test_mock_job_goes_from_submit_to_done_through_the_worker(stack: Stack) -> None:
    job = stack.wait_job(stack.submit(engine="mock"))
    assert job.state is JobState.DONE, job.error
    assert job.summary is not None
    assert job.summary.zpe_ev == pytest.approx(reference_zpe(engine="mock"), rel=1e-9)
    assert_committed_once_by_the_worker(stack.store, job)
    wait_for(lambda: not stack.queued_cloud_tasks(), 10, "the queue to drain")


def test_duplicate_deliveries_commit_each_task_once(stack: Stack) -> None:
    stack.client.pause_queue(request={"name": stack.queue})
    try:
        first = stack.submit(engine="mock", delta=0.012)
        # Another job wanting the same points re-dispatches them under the same names,
        # and so does the test: the emulator keeps every copy (no name de-duplication).
        second = stack.submit(engine="mock", delta=0.012, temperature=300.0)
        job = stack.store.get_job(first).value  # type: ignore[union-attr]
        queued = queued_tasks(stack.store, job)  # the reference point was done before: reused
        assert len(queued) == job.total_tasks - 1
        stack.dispatcher().dispatch(queued)
        assert len(stack.queued_cloud_tasks()) == 3 * len(queued)
    finally:
        stack.client.resume_queue(request={"name": stack.queue})
    jobs = [stack.wait_job(first), stack.wait_job(second)]
    assert [j.state for j in jobs] == [JobState.DONE, JobState.DONE]
    assert jobs[0].summary is not None and jobs[1].summary is not None
    assert jobs[0].summary.zpe_ev == jobs[1].summary.zpe_ev
    assert_committed_once_by_the_worker(stack.store, jobs[0])
    # Every copy was answered 2xx: nothing is left for the emulator to retry.
    wait_for(lambda: not stack.queued_cloud_tasks(), 20, "the queue to drain")


def test_concurrent_deliveries_of_one_task_commit_one_result(stack: Stack) -> None:
    service = stack.local_service()
    job, _ = service.submit(JobRequest(input_text=H2, engine="mock", delta=0.014), owner="t")
    task_id = queued_tasks(stack.store, job)[0].task_id
    responses: list[httpx.Response] = []
    barrier = threading.Barrier(4)

    def deliver() -> None:
        barrier.wait()
        responses.append(stack.push(task_id, **{"X-ZPE-Push-Secret": SECRET}))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in responses] == [200] * 4
    outcomes = sorted(r.json()["outcome"] for r in responses)
    assert outcomes.count("committed") == 1, outcomes
    assert set(outcomes) <= {"committed", "skipped", "already_done"}
    task = stack.store.get_task(task_id).value  # type: ignore[union-attr]
    assert task.state is TaskState.DONE and len(task.history) == 1
    again = stack.push(task_id, **{"X-ZPE-Push-Secret": SECRET})  # a late duplicate
    assert again.status_code == 200 and again.json()["outcome"] == "already_done"
    assert stack.store.get_task(task_id).value.history == task.history  # type: ignore[union-attr]


def test_push_without_valid_credentials_is_refused_and_runs_nothing(stack: Stack) -> None:
    service = stack.local_service()
    job, _ = service.submit(JobRequest(input_text=H2, engine="mock", delta=0.015), owner="t")
    task_id = queued_tasks(stack.store, job)[0].task_id
    assert stack.push(task_id).status_code == 401
    assert stack.push(task_id, **{"X-ZPE-Push-Secret": SECRET[:-1] + "x"}).status_code == 401
    assert stack.push(task_id, Authorization="Bearer not.a.token").status_code == 401
    task = stack.store.get_task(task_id).value  # type: ignore[union-attr]
    assert (task.state, task.attempts, task.history) == (TaskState.QUEUED, 0, [])


def _stale_version_job(stack: Stack, version: str) -> tuple[JobService, Job, str]:
    """A job whose tasks want mock ``version``: this worker (mock-1) fails them with a
    retryable ``engine_version_mismatch`` until they are fixed or given up."""
    service = stack.local_service(engine_versions={"mock": version})
    job, _ = service.submit(JobRequest(input_text=H2, engine="mock", mobile=[1]), owner="t")
    task_id = job.tasks[0].task_id
    for ref in job.tasks:  # only the first task is broken; the others are made right
        if ref.task_id != task_id:
            _fix_version(stack.store, ref.task_id)
    return service, job, task_id


def _fix_version(store: JobStore, task_id: str) -> None:
    def change(task: Any) -> Any:
        task.spec.engine_version = "mock-1"
        return task

    store.mutate_task(task_id, change)


def test_retryable_failure_answers_503_and_the_retry_succeeds(stack: Stack) -> None:
    _, job, task_id = _stale_version_job(stack, "mock-0a")
    stack.dispatcher().dispatch(queued_tasks(stack.store, job))

    def failures() -> int:
        task = stack.store.get_task(task_id).value  # type: ignore[union-attr]
        return sum(1 for a in task.history if a.outcome == "failed")

    wait_for(lambda: failures() >= 2, 30, "a second (re-)delivery after the 503")
    stack.client.pause_queue(request={"name": stack.queue})
    try:
        _fix_version(stack.store, task_id)  # the "upgrade" that makes the next attempt work
    finally:
        stack.client.resume_queue(request={"name": stack.queue})
    done = stack.wait_job(job.job_id)
    assert done.state is JobState.DONE, done.error
    task = stack.store.get_task(task_id).value  # type: ignore[union-attr]
    outcomes = [a.outcome for a in task.history]
    assert outcomes[-1] == "done" and outcomes.count("failed") >= 2
    errors = {a.error.code for a in task.history if a.error is not None}
    assert errors == {"engine_version_mismatch"}


def test_last_delivery_attempt_dead_letters_and_fails_the_job(stack: Stack) -> None:
    _, job, task_id = _stale_version_job(stack, "mock-0b")
    stack.dispatcher().dispatch(queued_tasks(stack.store, job))
    failed = stack.wait_job(job.job_id, timeout=60)
    assert failed.state is JobState.FAILED
    assert failed.error is not None and failed.error.code == "engine_version_mismatch"
    assert "last delivery attempt" in failed.error.message
    task = stack.store.get_task(task_id).value  # type: ignore[union-attr]
    assert task.state is TaskState.FAILED and task.dead_letter
    assert task.attempts == stack.settings.tasks_max_attempts  # one per delivery
    assert task_id in {t.task_id for t in stack.store.dead_letters()}
    wait_for(lambda: not stack.queued_cloud_tasks(), 10, "the emulator to stop retrying")


def test_worker_killed_mid_task_the_job_still_finishes(stack: Stack) -> None:
    job_id = stack.submit(engine="mock", mobile=[1], delta=0.018)
    job = stack.store.get_job(job_id).value  # type: ignore[union-attr]

    def leased() -> str | None:
        for ref in job.tasks:
            task = stack.store.get_task(ref.task_id).value  # type: ignore[union-attr]
            if task.state is TaskState.LEASED:
                return task.task_id
        return None

    victim = wait_for(leased, 30, "a task in flight")
    stack.worker.stop(signal.SIGKILL)
    stack.worker.start()
    done = stack.wait_job(job_id, timeout=90)
    assert done.state is JobState.DONE, done.error
    assert done.summary is not None
    assert done.summary.zpe_ev == pytest.approx(
        reference_zpe(engine="mock", mobile=[1], delta=0.018), rel=1e-9
    )
    history = stack.store.get_task(victim).value.history  # type: ignore[union-attr]
    assert history[0].outcome == "expired" and history[-1].outcome == "done"
    assert_committed_once_by_the_worker(stack.store, done)


def test_sigterm_lets_the_running_task_finish_or_releases_it(stack: Stack) -> None:
    """Last in this module: it stops the stack's worker."""
    service = stack.local_service()
    job, _ = service.submit(JobRequest(input_text=H2, engine="mock", delta=0.019), owner="t")
    finishing, released = (task.task_id for task in queued_tasks(stack.store, job)[:2])

    def deliver(task_id: str, into: list[httpx.Response | Exception]) -> threading.Thread:
        def run() -> None:
            try:
                into.append(stack.push(task_id, **{"X-ZPE-Push-Secret": SECRET}))
            except httpx.HTTPError as exc:
                into.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def running(task_id: str) -> bool:
        return stack.store.get_task(task_id).value.state is TaskState.LEASED  # type: ignore[union-attr]

    # Within the grace period (8 s by default): the task finishes and is answered 200.
    answers: list[httpx.Response | Exception] = []
    thread = deliver(finishing, answers)
    wait_for(lambda: running(finishing), 20, "the task to start")
    stack.worker.stop(signal.SIGTERM)  # uvicorn re-raises SIGTERM after a graceful shutdown
    thread.join()
    assert isinstance(answers[0], httpx.Response) and answers[0].status_code == 200
    assert stack.store.get_task(finishing).value.state is TaskState.DONE  # type: ignore[union-attr]

    # Past the grace period: the lease is released (no attempt counted) for another instance.
    stack.worker.start(ZPE_MOCK_DELAY_SECONDS="30", ZPE_WORKER_SHUTDOWN_GRACE_SECONDS="1")
    answers = []
    thread = deliver(released, answers)
    wait_for(lambda: running(released), 20, "the task to start")
    stack.worker.stop(signal.SIGTERM)
    thread.join()
    assert not (isinstance(answers[0], httpx.Response) and answers[0].is_success)
    task = stack.store.get_task(released).value  # type: ignore[union-attr]
    assert (task.state, task.attempts) == (TaskState.QUEUED, 0)
    assert task.history[-1].outcome == "released"
