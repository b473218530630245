"""Pull workers for real: an API process in http-pull mode and ``zpe-worker pull`` processes.

Nothing is mocked: the API is ``zpe serve`` (uvicorn) on a file or Redis
store, the workers are separate processes that enroll with enroll tokens and
only speak HTTP to the API, the mock engine computes the forces. Leases are
short so that a SIGKILLed worker's lease expires within seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.servers import RedisServer, free_port, wait_until_up
from zpe_core.store import open_store

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
ADMIN = "e2e-admin-token-0123456789abcdef"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}

pytestmark = pytest.mark.slow


class Api:
    """A ``zpe serve`` process in http-pull mode."""

    def __init__(
        self, tmp_path: Path, store_url: str, extra_env: dict[str, str] | None = None
    ) -> None:
        self.store_url = store_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "api.log"
        env = {
            **os.environ,
            "ZPE_STORE_URL": store_url,
            "ZPE_EXECUTION_MODE": "http-pull",
            "ZPE_ADMIN_TOKEN": ADMIN,
            "ZPE_DEFAULT_ENGINE": "mock",
            "ZPE_LEASE_SECONDS": "3",
            "ZPE_HEARTBEAT_SECONDS": "0.5",
            "ZPE_REAPER_INTERVAL_SECONDS": "0.3",
            "ZPE_BACKOFF_BASE_SECONDS": "0.2",
            "ZPE_BACKOFF_CAP_SECONDS": "0.5",
            "ZPE_LEASE_POLL_MAX_SECONDS": "1",
            **(extra_env or {}),
        }
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zpe_api.cli", "serve", "--port", str(self.port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)
        # Start-up is not under test, and a loaded machine imports slowly.
        wait_until_up(f"{self.url}/readyz", self.proc, log=self.log_path, timeout=180)

    def enroll_token(self) -> str:
        response = self.client.post(
            "/calc/zpe/compute/enroll-tokens", json={}, headers=ADMIN_HEADERS
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token

    def submit(self, sample: str, *, engine: str = "mock", text: str | None = None) -> str:
        body = {"input_text": text or (SAMPLES / sample).read_text(), "engine": engine}
        response = self.client.post("/calc/zpe/jobs", json=body)
        assert response.status_code == 201, response.text
        job_id: str = response.json()["job_id"]
        return job_id

    def servers(self) -> list[dict[str, Any]]:
        response = self.client.get("/calc/zpe/compute/servers", headers=ADMIN_HEADERS)
        servers: list[dict[str, Any]] = response.json()["servers"]
        return servers

    def wait(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status: dict[str, Any] = self.client.get(f"/calc/zpe/jobs/{job_id}").json()
            if status["state"] in ("done", "failed", "cancelled"):
                return status
            assert time.monotonic() < deadline, f"job did not finish: {status}"
            time.sleep(0.1)

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class Worker:
    """A ``zpe-worker pull`` process; enrolls on first start with its enroll token."""

    def __init__(
        self,
        api: Api,
        tmp_path: Path,
        name: str,
        *,
        delay: float = 0.0,
        engines: str = "mock",
        concurrency: int = 1,
    ) -> None:
        self.token_file = tmp_path / f"{name}.token.json"
        self.log_path = tmp_path / f"{name}.log"
        env = {**os.environ, "ZPE_MOCK_DELAY_SECONDS": str(delay), "ZPE_ENROLL_TOKEN": ""}
        env["ZPE_WARM_START"] = "1"  # off by default; on here to test the shipping
        env["ZPE_WARM_START_DIR"] = str(tmp_path / f"{name}.warm")  # as if on its own machine
        env.pop("ZPE_STORE_URL", None)  # a pull worker never sees the store
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "zpe_worker.cli", "pull",
                "--api", api.url,
                "--token-file", str(self.token_file),
                "--enroll-token", api.enroll_token(),
                "--name", name,
                "--engines", engines,
                "--poll-wait", "1",
                "--idle-max", "0.3",
                "--grace", "20",
                "--concurrency", str(concurrency),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text()

    def wait(self, timeout: float = 30) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture
def file_api(tmp_path: Path) -> Iterator[Api]:
    api = Api(tmp_path, f"file://{tmp_path / 'store'}")
    yield api
    api.stop()


@pytest.fixture
def redis_api(tmp_path: Path, redis_server: RedisServer) -> Iterator[Api]:
    api = Api(tmp_path, f"{redis_server.url}?namespace=pull-{uuid.uuid4().hex[:10]}")
    yield api
    api.stop()


def test_two_pull_workers_complete_a_job_then_stop_on_sigterm(
    file_api: Api, tmp_path: Path
) -> None:
    workers = [Worker(file_api, tmp_path, f"w{i}", delay=0.15) for i in range(2)]
    try:
        # Both must be up before the job comes: on a loaded machine one worker can
        # import for longer than the other takes to run all ten tasks.
        _until(lambda: _polling(file_api) == 2, 180, "the workers never enrolled")
        job_id = file_api.submit("h2o_zpe.in")
        status = file_api.wait(job_id)
        assert status["state"] == "done", status
        assert status["progress"]["done"] == 10  # 19 points, 9 rebuilt by symmetry
        result = file_api.client.get(f"/calc/zpe/jobs/{job_id}/result").json()
        assert len([m for m in result["modes"] if m["counted"]]) == 3
        for worker in workers:
            assert worker.token_file.stat().st_mode & 0o777 == 0o600
            assert ADMIN not in worker.log() and "zpe_worker_" not in worker.log()
        done = {s["name"]: s["tasks_done"] for s in file_api.servers()}
        assert sum(done.values()) == 10 and all(count > 0 for count in done.values()), done
        for worker in workers:
            worker.proc.send_signal(signal.SIGTERM)
        assert [worker.wait(timeout=20) for worker in workers] == [0, 0]
    finally:
        for worker in workers:
            worker.kill()


def _polling(api: Api) -> int:
    """How many workers are up: a worker enrolls once its imports are done, then polls."""
    return len(api.servers())


def _counter(api: Api, name: str, route: str) -> float:
    """A counter of the API process, read through its ``GET /metrics``."""
    prefix = f'{name}{{route="{route}"}} '
    for line in api.client.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def test_workers_with_several_slots_lease_several_tasks_per_request(
    redis_api: Api, tmp_path: Path
) -> None:
    """Issue 17: a worker leases as many tasks as it has free slots in one request."""
    job_id = redis_api.submit("h2o_zpe.in")  # 10 tasks, queued before the workers ask
    workers = [Worker(redis_api, tmp_path, f"w{i}", delay=0.3, concurrency=4) for i in range(2)]
    try:
        status = redis_api.wait(job_id, timeout=120)
        assert status["state"] == "done", status
        assert status["progress"]["done"] == 10
        requests = _counter(redis_api, "zpe_pull_lease_requests_total", "leases")
        leased = _counter(redis_api, "zpe_pull_tasks_leased_total", "leases")
        assert leased >= 10, leased
        assert 0 < requests < 10 and requests < leased, (requests, leased)
        assert _counter(redis_api, "zpe_pull_lease_requests_total", "lease") == 0
        done = {s["name"]: s["tasks_done"] for s in redis_api.servers()}
        assert sum(done.values()) == 10, done
        for worker in workers:
            worker.proc.send_signal(signal.SIGTERM)
        assert [worker.wait(timeout=30) for worker in workers] == [0, 0]
    finally:
        for worker in workers:
            worker.kill()


def test_sigkilled_worker_loses_its_lease_and_another_finishes_the_job(
    redis_api: Api, tmp_path: Path
) -> None:
    doomed = Worker(redis_api, tmp_path, "doomed", delay=30)
    rescuer: Worker | None = None
    try:
        job_id = redis_api.submit("h2_zpe.in")

        def held() -> dict[str, int]:
            for server in redis_api.servers():
                if server["name"] == "doomed" and server["running"]:
                    running: dict[str, int] = server["running"]
                    return running
            return {}

        # It holds a lease and keeps it alive past the 3 s lease by heartbeating.
        running = _until(held, 30, "the worker never leased a task")
        time.sleep(4)
        assert held() == running
        ((task_id, epoch),) = running.items()
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.wait()
        rescuer = Worker(redis_api, tmp_path, "rescuer", delay=0.05)
        status = redis_api.wait(job_id, timeout=60)
        assert status["state"] == "done", status
        assert status["progress"]["done"] == 4  # H2: 13 points, 4 computed
        first = redis_api.client.get(f"/calc/zpe/jobs/{job_id}").json()
        # The killed worker's lease expired (an attempt) and the rescuer finished the task.
        letters = redis_api.client.get("/calc/zpe/admin/dead-letters", headers=ADMIN_HEADERS)
        assert letters.json()["dead_letters"] == []
        store_url = redis_api.store_url
        task = open_store(store_url).get_task(task_id)
        assert task is not None
        outcomes = [(h.worker_id, h.outcome) for h in task.value.history]
        doomed_id = next(s["server_id"] for s in redis_api.servers() if s["name"] == "doomed")
        rescuer_id = next(s["server_id"] for s in redis_api.servers() if s["name"] == "rescuer")
        assert outcomes == [(doomed_id, "expired"), (rescuer_id, "done")]
        assert task.value.attempts == 1 and task.value.result is not None
        assert task.value.result.worker_id == rescuer_id
        # A late result under the killed worker's stale lease is refused and changes nothing.
        creds = json.loads(doomed.token_file.read_text())
        late = httpx.post(
            f"{redis_api.url}/calc/zpe/compute/tasks/{task_id}/result",
            json={
                "epoch": epoch,
                "lease_id": "whatever",
                "event_id": "late-event-0001",
                "result": {
                    "energy_ev": 0.0,
                    "forces_ev_per_a": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
                    "engine": "mock",
                    "engine_version": task.value.spec.engine_version,
                },
            },
            headers={"Authorization": f"Bearer {creds['worker_token']}"},
        )
        assert late.status_code == 409, late.text
        again = open_store(store_url).get_task(task_id)
        assert again is not None and again.value.result == task.value.result
        # The job finished once: nothing about it moved since.
        assert redis_api.client.get(f"/calc/zpe/jobs/{job_id}").json() == first
        rescuer.proc.send_signal(signal.SIGTERM)
        assert rescuer.wait(timeout=20) == 0
    finally:
        doomed.kill()
        if rescuer is not None:
            rescuer.kill()


def test_sigterm_lets_the_running_task_finish_and_starts_no_other(
    file_api: Api, tmp_path: Path
) -> None:
    worker = Worker(file_api, tmp_path, "graceful", delay=2.0)
    try:
        job_id = file_api.submit("h2_zpe.in")

        def running() -> dict[str, int]:
            servers = file_api.servers()
            started = '"task started"' in worker.log()
            return servers[0]["running"] if servers and started else {}

        held = _until(running, 30, "the worker never leased a task")
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
        server = file_api.servers()[0]
        assert server["running"] == {} and server["tasks_done"] == 1
        status = file_api.client.get(f"/calc/zpe/jobs/{job_id}").json()
        assert status["progress"]["done"] == 1 and status["state"] == "running"
        (task_id,) = held
        assert '"task finished"' in worker.log() and task_id in worker.log()
    finally:
        worker.kill()


@pytest.mark.pwx
def test_real_pwx_h2_job_through_two_pull_workers(tmp_path: Path) -> None:
    """The real engine behind NAT: the API has no pw.x, two workers run it (30 Ry H2), and
    the worker that did not compute the reference warm-starts from its shipped density."""
    import shutil

    from tests.conftest import require_or_skip
    from zpe_core.engines import get_engine
    from zpe_core.settings import Settings

    require_or_skip(shutil.which("pw.x") is not None, "pw.x (apt-get install quantum-espresso)")
    version = get_engine("qe", Settings(pw_command="pw.x")).version()  # e.g. "qe-6.7MaX"
    text = (SAMPLES / "h2_zpe.in").read_text()
    text = text.replace("ecutwfc = 50.0", "ecutwfc = 30.0").replace(
        "ecutrho = 400.0", "ecutrho = 240.0"
    )
    api = Api(
        tmp_path,
        f"file://{tmp_path / 'store'}",
        {"ZPE_QE_VERSION": version, "ZPE_LEASE_SECONDS": "60", "ZPE_HEARTBEAT_SECONDS": "5"},
    )
    workers: list[Worker] = []
    try:
        workers = [Worker(api, tmp_path, f"qe{i}", engines="qe") for i in range(2)]
        job_id = api.submit("h2_zpe.in", engine="qe", text=text)
        status = api.wait(job_id, timeout=900)
        assert status["state"] == "done", status
        result = api.client.get(f"/calc/zpe/jobs/{job_id}/result").json()
        counted = [m["frequency_cm"] for m in result["modes"] if m["counted"]]
        assert len(counted) == 1 and 3500 <= counted[0] <= 4800, result["freqs_cm"]
        assert result["engine_version"] == version
        done = {s["name"]: s["tasks_done"] for s in api.servers()}
        assert sum(done.values()) == 4, done
    finally:
        for worker in workers:
            worker.kill()
        api.stop()
