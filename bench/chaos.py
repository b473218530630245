"""Chaos suite: jobs keep their answers while processes and the store are killed under them.

Usage: ``uv run python bench/chaos.py [--store redis|gcs] [--jobs 200] [--seed 1]`` (prints
figures, exits 1 if an invariant broke). ``tests/chaos/test_chaos.py`` runs a smaller copy
in CI.

Everything runs on loopback, bounded in time and count, on one store server: redis-server
(append-only file on) or fake-gcs-server (its filesystem backend, so what it acknowledged
is on disk and survives a SIGKILL; its default memory backend would lose everything).

Phase 1, pull: ``zpe serve`` in ``http-pull`` mode on that store, three ``zpe-worker pull``
processes. A client submits ``--jobs`` mock jobs of mixed sizes (7 and 13 tasks, and
``--big-jobs`` of 385) with an ``Idempotency-Key`` each, retried on 503 / 429 /
connection errors like a real client, never re-submitted under a new key, and polls them.
Meanwhile:

* every few seconds a random worker is SIGKILLed and a fresh process started on its token
  file;
* at 25 % of the submissions the API is SIGKILLed (mid-request: no graceful shutdown),
  then started on the same port and store;
* at 50 % the store server is SIGKILLed and started again on the same port and data;
* at 75 % the store is stopped (SIGTERM) for ``--outage`` seconds (the API answers 503;
  counted).

Phase 2, push: the API in ``cloud-tasks`` mode, the Cloud Tasks emulator and the worker
service (``zpe-worker serve``) on another namespace (prefix) of the same store. Jobs are
submitted with the queue paused, every queued task is enqueued twice more (three copies;
the emulator never de-duplicates names) and also POSTed straight to the worker by
concurrent threads; then the queue resumes and the worker service is SIGKILLed and
restarted once.

Checked from the store and the logs at the end: jobs submitted, done, failed, lost (must
be 0), jobs created twice (0), tasks committed twice (0: more than one ``done`` attempt
in a task's history, or more than one "task committed" log line), results identical to a
clean in-process run (ZPE and every frequency), and the longest time any job waited for
progress after a fault was repaired.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.fixtures.servers import (  # noqa: E402
    GcsServer,
    RedisServer,
    free_port,
    push_worker_argv,
    server_runtime,
    wait_until_up,
)
from tests.fixtures.store_writes import cluster_input  # noqa: E402
from zpe_client.models import JobRequest, JobState, TaskState  # noqa: E402
from zpe_core.jobs.models import Job, Task  # noqa: E402
from zpe_core.jobs.runner import run_task  # noqa: E402
from zpe_core.jobs.service import JobService  # noqa: E402
from zpe_core.settings import Settings  # noqa: E402
from zpe_core.store import JobStore, open_store  # noqa: E402

SAMPLES = ROOT / "samples"
MOLECULES = ["h2_zpe.in", "co_zpe.in", "h2o_zpe.in", "nh3_zpe.in"]
ADMIN = "chaos-admin-token-0123456789abcdef"
PUSH_SECRET = "chaos-push-secret-0123456789"
TERMINAL = ("done", "failed", "cancelled")
STORES = ("redis", "gcs")
BIG_MOLECULES = 32  # cluster_input: 64 mobile atoms, 385 tasks

StoreServer = RedisServer | GcsServer


def store_server(kind: str) -> StoreServer:
    """The server behind a store ``kind`` (``redis`` or ``gcs``), not started."""
    if kind == "redis":
        return RedisServer(server_runtime())
    if kind == "gcs":
        return GcsServer(runtime=server_runtime())
    raise ValueError(f"store must be one of {STORES}, not {kind!r}")


def store_url(server: StoreServer, name: str) -> str:
    """A private store on ``server``: its own Redis namespace or GCS prefix."""
    if isinstance(server, GcsServer):
        return f"gs://{server.bucket}/{name}"
    return f"{server.url}?namespace={name}"


def store_env(server: StoreServer) -> dict[str, str]:
    """What a process needs in its environment to reach ``server``'s store."""
    if isinstance(server, GcsServer):
        return {"STORAGE_EMULATOR_HOST": server.emulator_host}
    return {}


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------- the workload


def job_requests(n: int, seed: int, big: int = 0, deltas: int = 0) -> list[dict[str, Any]]:
    """``n`` mock job bodies: one mobile atom (7 tasks) or, one in four, two (13 tasks),
    a delta of their own (so displaced points are new tasks; the undisplaced reference of
    a molecule is shared), and every tenth job an exact physical duplicate of an earlier
    one at another temperature (every task reused or shared while in flight). ``big`` of
    them, spread evenly, are 385-task jobs (64 mobile atoms, a delta of their own).
    ``deltas`` > 0 cycles the small jobs through that many deltas (a multiple of 4 keeps
    each molecule on its own ones), so later jobs reuse or share earlier jobs' points:
    fewer distinct tasks for the same number of jobs."""
    rng = random.Random(seed)
    texts = {name: (SAMPLES / name).read_text() for name in MOLECULES}
    natoms = {"h2_zpe.in": 2, "co_zpe.in": 2, "h2o_zpe.in": 3, "nh3_zpe.in": 4}
    big_at = {(k + 1) * n // (big + 1) for k in range(big)} if n > big else set(range(big))
    bodies: list[dict[str, Any]] = []
    for i in range(n):
        if i in big_at:
            bodies.append(
                {
                    "input_text": cluster_input(BIG_MOLECULES),
                    "engine": "mock",
                    "symmetry": "off",
                    "delta": round(0.02 + 0.00011 * i, 6),
                }
            )
            continue
        if i % 10 == 9:
            twin = dict(bodies[rng.randrange(max(1, i - 8), i)])
            twin["temperature"] = 350.0
            bodies.append(twin)
            continue
        name = MOLECULES[i % len(MOLECULES)]
        count = 2 if rng.random() < 0.25 else 1
        bodies.append(
            {
                "input_text": texts[name],
                "engine": "mock",
                "mobile": sorted(rng.sample(range(natoms[name]), count)),
                "delta": round(0.006 + 0.00007 * (i % deltas if deltas else i), 6),
            }
        )
    return bodies


def clean_results(bodies: list[dict[str, Any]]) -> list[tuple[float, list[float]]]:
    """ZPE and frequencies of each body, computed in this process on a memory store."""
    settings = Settings(store_url="memory://", default_engine="mock", allowed_engines="mock")
    service = JobService(open_store("memory://"), None, settings)
    out = []
    for body in bodies:
        job, _ = service.submit(JobRequest(**body), owner="clean")
        for task_id in {ref.task_id for ref in job.tasks}:
            found = service.store.get_task(task_id)
            if found is not None and found.value.state is not TaskState.DONE:
                run_task(service, task_id, "clean")
        result = service.get_result(job.job_id)
        out.append((float(result["zpe_ev"]), [float(f) for f in result["freqs_cm"]]))  # type: ignore[arg-type,union-attr]
    return out


# ---------------------------------------------------------------------- processes


class Service:
    """A uvicorn service (``zpe serve`` or ``zpe-worker serve``) on a fixed port."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, url: str) -> None:
        self.argv, self.env, self.log_path, self.url = argv, env, log_path, url
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 300.0) -> None:
        """Start and wait for ``/healthz``: on this shared machine under a load of 10-18 the
        API's imports alone took over 90 s, and start-up time is not under test."""
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        wait_until_up(f"{self.url}/healthz", self.process, log=self.tail, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


class PullWorker:
    """A ``zpe-worker pull`` process; its first start enrolls, restarts reuse the token file."""

    def __init__(
        self, api_url: str, workdir: Path, name: str, delay: float, concurrency: int = 1
    ) -> None:
        self.api_url, self.name, self.concurrency = api_url, name, concurrency
        self.token_file = workdir / f"{name}.token.json"
        self.log_path = workdir / f"{name}.log"
        self.env = {**os.environ, "ZPE_MOCK_DELAY_SECONDS": str(delay), "ZPE_ENROLL_TOKEN": ""}
        self.env.pop("ZPE_STORE_URL", None)  # a pull worker never sees the store
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, enroll_token: str | None = None) -> None:
        argv = [
            sys.executable, "-m", "zpe_worker.cli", "pull",
            "--api", self.api_url,
            "--token-file", str(self.token_file),
            "--name", self.name,
            "--engines", "mock",
            "--concurrency", str(self.concurrency),
            "--poll-wait", "1",
            "--idle-max", "0.3",
            "--grace", "5",
        ]  # fmt: skip
        if enroll_token is not None:
            argv += ["--enroll-token", enroll_token]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                argv, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.starts += 1

    def ready(self) -> bool:
        """Its latest start got as far as the pull loop (imports done, token loaded)."""
        if self.process is None or self.process.poll() is not None:
            return False
        return (
            self.log_path.read_text(errors="replace").count('"pull worker started"') >= self.starts
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ---------------------------------------------------------------------- a real client


@dataclass
class ClientStats:
    answers_503: int = 0
    answers_429: int = 0
    connection_errors: int = 0
    other_errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str) -> None:
        with self.lock:
            if what == "503":
                self.answers_503 += 1
            elif what == "429":
                self.answers_429 += 1
            elif what == "conn":
                self.connection_errors += 1
            else:
                self.other_errors[what] += 1


class Client:
    """Calls the API the way a careful client does: retry 503, 429 and connection errors
    (honouring ``Retry-After``, capped), give up only at ``deadline``."""

    def __init__(self, base_url: str, stats: ClientStats, deadline: float) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.stats = stats
        self.deadline = deadline

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        """The first answer that is not a retryable failure; None if the deadline passed."""
        failures = 0
        while time.monotonic() < self.deadline:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.HTTPError:
                self.stats.count("conn")
                failures += 1
                time.sleep(min(2.0, 0.1 * 2**failures) * random.uniform(0.5, 1.0))
                continue
            if response.status_code in (429, 503):
                self.stats.count(str(response.status_code))
                failures += 1
                hint = float(response.headers.get("Retry-After", "1") or 1)
                time.sleep(min(hint, 1.0, 0.1 * 2**failures) * random.uniform(0.5, 1.0))
                continue
            if (
                response.status_code == 409
                and response.headers.get("content-type", "").startswith("application/problem")
                and response.json().get("code") == "idempotency_in_progress"
            ):
                self.stats.count("409 idempotency_in_progress")
                time.sleep(0.5)
                continue
            return response
        return None

    def close(self) -> None:
        self.http.close()


# ---------------------------------------------------------------------- the run


@dataclass
class Submitted:
    index: int
    key: str
    job_id: str | None = None
    submitted_at: float = 0.0
    state: str | None = None
    seen_done_at: float | None = None


@dataclass
class Event:
    kind: str
    down_at: float
    up_at: float


@dataclass
class PullFigures:
    jobs: int
    store: str = "redis"
    sizes: Counter[int] = field(default_factory=Counter)  # total tasks -> jobs
    submitted: int = 0
    done: int = 0
    failed: int = 0
    lost: int = 0
    jobs_in_store: int = 0
    duplicate_jobs: int = 0
    tasks_in_store: int = 0
    task_refs: int = 0
    tasks_committed_twice: int = 0
    commit_log_lines_twice: int = 0
    result_mismatches: int = 0
    max_zpe_diff_ev: float = 0.0
    max_freq_diff_cm: float = 0.0
    kills: int = 0
    worker_restarts: int = 0
    worker_start_seconds: list[float] = field(default_factory=list)
    api_down_seconds: float = 0.0
    api_restarts: int = 0
    api_sigkills: int = 0
    store_restarts: int = 0
    store_sigkills: int = 0
    outage_seconds: float = 0.0
    answers_503: int = 0
    answers_429: int = 0
    connection_errors: int = 0
    readyz_503: int = 0
    lease_expiries: int = 0
    releases: int = 0
    failed_attempts: int = 0
    dead_letters: int = 0
    longest_wait_after_recovery_s: float = 0.0
    longest_wait_event: str = ""
    wall_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


class PullChaos:
    """Phase 1: http-pull with three workers, SIGKILLs, restarts and an outage."""

    def __init__(
        self,
        workdir: Path,
        server: StoreServer,
        *,
        jobs: int,
        seed: int,
        big_jobs: int = 0,
        deltas: int = 0,
        in_flight: int = 24,
        kill_every: tuple[float, float] = (3.0, 5.0),
        outage_seconds: float = 6.0,
        mock_delay: float = 0.05,
        concurrency: int = 1,
        timeout: float = 900.0,
    ) -> None:
        self.workdir = workdir
        self.server = server
        self.rng = random.Random(seed)
        self.bodies = job_requests(jobs, seed, big_jobs, deltas)
        self.in_flight = in_flight
        self.kill_every = kill_every
        self.outage_seconds = outage_seconds
        self.mock_delay = mock_delay
        self.timeout = timeout
        self.store_url = store_url(server, f"chaos-{uuid.uuid4().hex[:8]}")
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            **store_env(server),
            "ZPE_STORE_URL": self.store_url,
            "ZPE_EXECUTION_MODE": "http-pull",
            "ZPE_ADMIN_TOKEN": ADMIN,
            "ZPE_DEFAULT_ENGINE": "mock",
            "ZPE_LEASE_SECONDS": "5",
            "ZPE_HEARTBEAT_SECONDS": "0.5",
            "ZPE_REAPER_INTERVAL_SECONDS": "0.5",
            "ZPE_BACKOFF_BASE_SECONDS": "0.2",
            "ZPE_BACKOFF_CAP_SECONDS": "1",
            "ZPE_RETRY_MAX": "6",
            "ZPE_LEASE_POLL_MAX_SECONDS": "1",
            # The limits are another suite's subject: here they must not shape the load.
            "ZPE_MAX_ACTIVE_JOBS_PER_OWNER": "0",
            "ZPE_POLL_RATE_PER_SECOND": "0",
            "ZPE_LOG_LEVEL": "INFO",
        }
        argv = [sys.executable, "-m", "zpe_api.cli", "serve", "--port", str(port)]
        self.api = Service(argv, env, workdir / "api.log", self.api_url)
        self.workers = [
            PullWorker(self.api_url, workdir, f"w{i}", mock_delay, concurrency) for i in range(3)
        ]
        self.items = [Submitted(i, f"chaos-{uuid.uuid4().hex}") for i in range(jobs)]
        self.stats = ClientStats()
        self.events: list[Event] = []
        self.figures = PullFigures(jobs=jobs, store=server.name)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._next = 0  # next body to submit
        self.worst: tuple[Job, Event] | None = None

    # ---------------------------------------------------------------- helpers

    def _admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        client = Client(self.api_url, self.stats, time.monotonic() + 120)
        try:
            response = client.call(
                method, path, headers={"Authorization": f"Bearer {ADMIN}"}, **kwargs
            )
        finally:
            client.close()
        if response is None:
            raise RuntimeError(f"{method} {path}: no answer")
        return response

    def _submitted(self) -> int:
        with self._lock:
            return self._next

    def _active(self) -> int:
        return sum(1 for it in self.items if it.job_id and it.state not in TERMINAL)

    # ---------------------------------------------------------------- threads

    def _submitter(self, client: Client) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._next >= len(self.items):
                    return
                if self._active() >= self.in_flight:
                    index = None
                else:
                    index = self._next
                    self._next += 1
            if index is None:
                if time.monotonic() > client.deadline:  # the poller has given up too
                    return
                time.sleep(0.05)
                continue
            item = self.items[index]
            item.submitted_at = time.time()
            response = client.call(
                "POST",
                "/calc/zpe/jobs",
                json=self.bodies[index],
                headers={"Idempotency-Key": item.key},
            )
            if response is None:
                return
            if response.status_code not in (200, 201):
                self.figures.failures.append(
                    f"submit {index} answered {response.status_code}: {response.text[:300]}"
                )
                item.state = "rejected"
                continue
            item.job_id = response.json()["job_id"]

    def _poller(self, client: Client) -> None:
        while not self._stop.is_set():
            pending = [it for it in self.items if it.job_id and it.state not in TERMINAL]
            if not pending:
                if self._submitted() >= len(self.items) and all(
                    it.job_id or it.state for it in self.items
                ):
                    return
                if time.monotonic() > client.deadline:  # the submitter has given up too
                    return
                time.sleep(0.1)
                continue
            for item in pending:
                response = client.call("GET", f"/calc/zpe/jobs/{item.job_id}")
                if response is None:
                    return
                if response.status_code != 200:
                    self.stats.count(f"poll {response.status_code}")
                    continue
                state = response.json()["state"]
                if state in TERMINAL and item.state not in TERMINAL:
                    item.seen_done_at = time.time()
                item.state = state
            time.sleep(0.2)

    def _killer(self) -> None:
        """Every few seconds SIGKILL a random running worker and start a fresh process on
        its token file; the fault ends when the new process is in its pull loop."""
        restarting: dict[PullWorker, float] = {}
        while not self._stop.wait(self.rng.uniform(*self.kill_every)):
            for worker, down in list(restarting.items()):
                if worker.ready():
                    del restarting[worker]
                    self.events.append(Event(f"kill {worker.name}", down, time.time()))
                    self.figures.worker_start_seconds.append(time.time() - down)
            running = [w for w in self.workers if w not in restarting and w.ready()]
            if not running:
                continue
            worker = self.rng.choice(running)
            worker.kill()
            self.figures.kills += 1
            restarting[worker] = time.time()
            worker.start()
            self.figures.worker_restarts += 1

    def _faults(self) -> None:
        n = len(self.items)
        plan: list[tuple[float, str, Callable[[], None]]] = [
            (0.25, "api SIGKILL", self._kill_api),
            (0.50, f"{self.server.name} SIGKILL", self._kill_store),
            (0.75, "store outage", self._outage),
        ]
        for fraction, name, action in plan:
            while self._submitted() < fraction * n and not self._stop.is_set():
                time.sleep(0.1)
            if self._stop.is_set():
                return
            log(f"{name} at {self._submitted()}/{n} submitted")
            try:
                action()
            except Exception as exc:  # the verdict must say which fault broke, and why
                self.figures.failures.append(f"fault {name} failed: {exc!s:.500}")
                log(f"{name} failed: {exc!s:.500}")

    def _kill_api(self) -> None:
        """SIGKILL the API in the middle of its requests, start it on the same port."""
        down = time.time()
        self.api.stop(signal.SIGKILL)
        self.figures.api_sigkills += 1
        self.api.start()
        self.figures.api_restarts += 1
        self.figures.api_down_seconds = time.time() - down
        self.events.append(Event("api SIGKILL", down, time.time()))

    def _kill_store(self) -> None:
        """SIGKILL the store server, start it on the same port and data directory."""
        down = time.time()
        self.server.kill()
        self.figures.store_sigkills += 1
        self.server.start()
        self.figures.store_restarts += 1
        self.events.append(Event(f"{self.server.name} SIGKILL", down, time.time()))

    def _outage(self) -> None:
        down = time.time()
        self.server.stop()
        probe = httpx.Client(base_url=self.api_url, timeout=10)
        try:
            end = time.monotonic() + self.outage_seconds
            while time.monotonic() < end:
                try:
                    if probe.get("/readyz").status_code == 503:
                        self.figures.readyz_503 += 1
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        finally:
            probe.close()
        self.server.start()
        up = time.time()
        self.figures.outage_seconds = up - down
        self.figures.store_restarts += 1
        self.events.append(Event("store outage", down, up))

    # ---------------------------------------------------------------- run

    def run(self) -> PullFigures:
        try:
            return self._run()
        finally:
            self._stop.set()
            for worker in self.workers:
                worker.stop()
            self.api.stop()

    def _run(self) -> PullFigures:
        started = time.monotonic()
        self.api.start()
        for worker in self.workers:
            token = self._admin("POST", "/calc/zpe/compute/enroll-tokens", json={}).json()["token"]
            worker.start(token)
        for worker in self.workers:  # enrolled before anyone is killed
            until = time.monotonic() + 120
            while not worker.token_file.exists():
                if worker.process is not None and worker.process.poll() is not None:
                    raise RuntimeError(f"{worker.name} exited: {worker.log_path.read_text()}")
                if time.monotonic() > until:
                    raise RuntimeError(f"{worker.name} did not enroll")
                time.sleep(0.1)
        deadline = time.monotonic() + self.timeout
        submit_client = Client(self.api_url, self.stats, deadline)
        poll_client = Client(self.api_url, self.stats, deadline)
        threads = [
            threading.Thread(target=self._submitter, args=(submit_client,), name="submit"),
            threading.Thread(target=self._poller, args=(poll_client,), name="poll"),
        ]
        chaos = [
            threading.Thread(target=self._killer, name="kill", daemon=True),
            threading.Thread(target=self._faults, name="faults", daemon=True),
        ]
        try:
            for thread in threads + chaos:
                thread.start()
            progress = time.monotonic()
            while any(t.is_alive() for t in threads):
                threads[1].join(timeout=5)
                if time.monotonic() - progress > 20:
                    progress = time.monotonic()
                    done = sum(1 for it in self.items if it.state in TERMINAL)
                    log(
                        f"{self._submitted()} submitted, {done} finished, "
                        f"kills {self.figures.kills}"
                    )
            self._stop.set()
            for thread in chaos:
                thread.join(timeout=60)
        finally:
            self._stop.set()
            submit_client.close()
            poll_client.close()
        self.figures.wall_seconds = time.monotonic() - started
        self._collect()
        return self.figures

    # ---------------------------------------------------------------- the verdict

    def _collect(self) -> None:
        f = self.figures
        f.answers_503 = self.stats.answers_503
        f.answers_429 = self.stats.answers_429
        f.connection_errors = self.stats.connection_errors
        for what, count in self.stats.other_errors.items():
            f.failures.append(f"client saw {what} x{count}")
        store = open_store(self.store_url)
        try:
            self._collect_from(store)
        finally:
            store.close()

    def _collect_from(self, store: JobStore) -> None:
        f = self.figures
        f.submitted = sum(1 for it in self.items if it.job_id)
        jobs: dict[str, Job] = {}
        for item in self.items:
            found = store.get_job(item.job_id) if item.job_id else None
            if found is None:
                continue
            jobs[found.value.job_id] = found.value
        f.done = sum(1 for j in jobs.values() if j.state is JobState.DONE)
        f.failed = sum(1 for j in jobs.values() if j.state is JobState.FAILED)
        f.lost = len(self.items) - sum(1 for j in jobs.values() if j.state.terminal)
        f.sizes = Counter(j.total_tasks for j in jobs.values())
        for job in jobs.values():
            if job.state is JobState.FAILED:
                f.failures.append(f"job {job.job_id} failed: {job.error}")
            elif not job.state.terminal:
                f.failures.append(describe_stuck_job(store, job))
        all_ids = store.all_job_ids()
        f.jobs_in_store = len(all_ids)
        f.duplicate_jobs = len(all_ids) - f.submitted
        # tasks: commits per task from the history and from the API's log
        tasks: dict[str, Task] = {}
        for task_id in store.all_task_ids():
            found_task = store.get_task(task_id)
            if found_task is not None:
                tasks[task_id] = found_task.value
        f.tasks_in_store = len(tasks)
        f.task_refs = sum(j.total_tasks for j in jobs.values())
        for task in tasks.values():
            outcomes = Counter(a.outcome for a in task.history)
            if outcomes["done"] > 1:
                f.tasks_committed_twice += 1
            f.lease_expiries += outcomes["expired"]
            f.releases += outcomes["released"]
            f.failed_attempts += outcomes["failed"]
            f.dead_letters += int(task.dead_letter)
        commits = Counter(
            line.get("task_id")
            for line in _json_lines(self.api.log_path)
            if line.get("msg") == "task committed"
        )
        f.commit_log_lines_twice = sum(1 for n in commits.values() if n > 1)
        # results against a clean run
        clean = clean_results(self.bodies)
        for item in self.items:
            job = jobs.get(item.job_id or "")
            if job is None or job.state is not JobState.DONE:
                continue
            client = Client(self.api_url, self.stats, time.monotonic() + 60)
            response = client.call("GET", f"/calc/zpe/jobs/{item.job_id}/result")
            client.close()
            if response is None or response.status_code != 200:
                f.result_mismatches += 1
                f.failures.append(f"result of job {item.job_id}: no answer")
                continue
            zpe, freqs = clean[item.index]
            got = response.json()
            zpe_diff = abs(float(got["zpe_ev"]) - zpe)
            got_freqs = [float(x) for x in got["freqs_cm"]]
            freq_diff = (
                max((abs(a - b) for a, b in zip(got_freqs, freqs, strict=True)), default=0.0)
                if len(got_freqs) == len(freqs)
                else float("inf")
            )
            f.max_zpe_diff_ev = max(f.max_zpe_diff_ev, zpe_diff)
            f.max_freq_diff_cm = max(f.max_freq_diff_cm, freq_diff)
            if zpe_diff > 1e-9 or freq_diff > 1e-6:
                f.result_mismatches += 1
        # the longest a job waited for progress after a fault was repaired
        for event in self.events:
            for job in jobs.values():
                if not (job.created_at < event.up_at and (job.finished_at or 1e18) > event.up_at):
                    continue
                marks = sorted(
                    a.ended_at
                    for ref_id in {ref.task_id for ref in job.tasks}
                    if (task := tasks.get(ref_id)) is not None
                    for a in task.history
                    if a.outcome == "done" and a.ended_at is not None and a.ended_at > event.up_at
                )
                if job.finished_at is not None:
                    marks.append(job.finished_at)
                wait = (min(marks) if marks else time.time()) - event.up_at
                if wait > f.longest_wait_after_recovery_s:
                    f.longest_wait_after_recovery_s = wait
                    f.longest_wait_event = event.kind
                    self.worst = (job, event)
        self._dump(jobs, tasks)

    def _dump(self, jobs: dict[str, Job], tasks: dict[str, Task]) -> None:
        """Timelines for a post-mortem: events, and every job with its tasks' attempts."""
        t0 = min((j.created_at for j in jobs.values()), default=0.0)
        out: dict[str, Any] = {
            "events": [
                (e.kind, round(e.down_at - t0, 2), round(e.up_at - t0, 2)) for e in self.events
            ],
            "worst": [self.worst[0].job_id, self.worst[1].kind] if self.worst else None,
            "jobs": {},
        }
        for job in jobs.values():
            out["jobs"][job.job_id] = {
                "state": job.state.value,
                "created": round(job.created_at - t0, 2),
                "finished": round((job.finished_at or t0) - t0, 2),
                "tasks": {
                    ref.task_id[:10]: [
                        (a.outcome, a.worker_id[:8], round(a.started_at - t0, 2),
                         round((a.ended_at or t0) - t0, 2))
                        for a in tasks[ref.task_id].history
                    ]
                    for ref in job.tasks
                    if ref.task_id in tasks
                },
            }  # fmt: skip
        (self.workdir / "timeline.json").write_text(json.dumps(out, indent=1))


def describe_stuck_job(store: JobStore, job: Job) -> str:
    """What a post-mortem of a job that never finished needs, in one line: its state,
    its done markers, and each task not marked done with its lease and queue markers."""
    t = time.time()
    done = set(store.done_task_ids(job.job_id))
    parts = [
        f"job {job.job_id[:12]} {job.state.value}: {len(done)} of {job.total_tasks} done markers"
    ]
    keys = set(store._iter_keys("leases/")) | set(store._iter_keys("queue/"))  # diagnostic only
    finalizing = list(store._iter_keys(f"finalizing/{job.job_id}/"))
    if finalizing:
        parts.append(f"finalizing markers {finalizing}")
    for ref in job.tasks:
        if ref.task_id in done:
            continue
        found = store.get_task(ref.task_id)
        if found is None:
            parts.append(f"task {ref.task_id[:10]} missing")
            continue
        task = found.value
        lease = (
            f"lease epoch {task.lease.epoch} expires in {task.lease.expires_at - t:.1f} s"
            if task.lease is not None
            else "no lease"
        )
        markers = sorted(k.split("/", 1)[0] for k in keys if k.endswith(ref.task_id))
        history = [a.outcome for a in task.history]
        parts.append(
            f"task {ref.task_id[:10]} {task.state.value} attempts {task.attempts} {lease}, "
            f"due in {task.ready_at - t:.1f} s, markers {markers}, history {history}"
        )
    return "; ".join(parts)


def _json_lines(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            try:
                yield json.loads(raw)
            except ValueError:
                continue


def check_pull(f: PullFigures) -> list[str]:
    """The invariants; an empty list means they all held."""
    problems = []
    if f.lost:
        problems.append(f"{f.lost} job(s) lost")
    if f.submitted != f.jobs:
        problems.append(f"only {f.submitted} of {f.jobs} submissions were answered")
    if f.duplicate_jobs:
        problems.append(f"{f.duplicate_jobs} job(s) created twice")
    if f.tasks_committed_twice or f.commit_log_lines_twice:
        problems.append(
            f"tasks committed twice: {f.tasks_committed_twice} (history), "
            f"{f.commit_log_lines_twice} (log)"
        )
    if f.result_mismatches:
        problems.append(f"{f.result_mismatches} result(s) differ from the clean run")
    if f.failed:
        problems.append(f"{f.failed} job(s) failed")
    unexpected = [line for line in f.failures if not line.startswith("job ")]
    if unexpected:
        problems.append(f"unexpected answers: {unexpected[:5]}")
    if f.kills == 0 or f.api_sigkills == 0 or f.store_sigkills == 0 or f.store_restarts < 2:
        problems.append("not every fault was injected")
    if f.answers_503 == 0 and f.readyz_503 == 0:
        problems.append("the store outage produced no 503")
    return problems


# ---------------------------------------------------------------------- phase 2: push


@dataclass
class PushFigures:
    jobs: int
    done: int = 0
    failed: int = 0
    lost: int = 0
    tasks: int = 0
    copies_enqueued: int = 0
    direct_pushes: int = 0
    deliveries: Counter[str] = field(default_factory=Counter)
    tasks_committed_twice: int = 0
    result_mismatches: int = 0
    worker_kills: int = 0
    wall_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def run_push(workdir: Path, server: StoreServer, *, jobs: int, seed: int) -> PushFigures:
    """Phase 2: duplicated and concurrent deliveries through the Cloud Tasks emulator."""
    from tests.fixtures.cloud_tasks import tasks_emulator_for
    from zpe_core.dispatch.cloud_tasks import CloudTasksDispatcher

    figures = PushFigures(jobs=jobs)
    tasks = tasks_emulator_for()
    if not tasks.available():
        raise RuntimeError(f"gcloud-tasks-emulator is not available ({tasks.runtime})")
    started = time.monotonic()
    bodies = job_requests(jobs, seed + 1)
    for i, body in enumerate(bodies):
        if "delta" in body:
            body["delta"] = round(body["delta"] + 0.03 + 0.0001 * i, 6)
    with tasks as emulator:
        queue = emulator.create_queue()
        push_store_url = store_url(server, f"push-{uuid.uuid4().hex[:8]}")
        worker_port, api_port = free_port(), free_port()
        env = {
            **os.environ,
            **store_env(server),
            "ZPE_STORE_URL": push_store_url,
            "ZPE_EXECUTION_MODE": "cloud-tasks",
            "ZPE_DEFAULT_ENGINE": "mock",
            "ZPE_TASKS_QUEUE": queue,
            "ZPE_WORKER_URL": f"http://127.0.0.1:{worker_port}",
            "ZPE_TASKS_EMULATOR_HOST": emulator.host,
            "ZPE_PUSH_SHARED_SECRET": PUSH_SECRET,
            "ZPE_TASKS_MAX_ATTEMPTS": "20",
            "ZPE_RETRY_MAX": "20",
            "ZPE_LEASE_SECONDS": "3",
            "ZPE_HEARTBEAT_SECONDS": "0.5",
            "ZPE_REAPER_INTERVAL_SECONDS": "0.5",
            "ZPE_BACKOFF_BASE_SECONDS": "0.2",
            "ZPE_BACKOFF_CAP_SECONDS": "0.5",
            "ZPE_REDISPATCH_AFTER_SECONDS": "30",
            "ZPE_MOCK_DELAY_SECONDS": "0.05",
            "ZPE_MAX_ACTIVE_JOBS_PER_OWNER": "0",
            "ZPE_POLL_RATE_PER_SECOND": "0",
            "ZPE_LOG_LEVEL": "INFO",
        }
        worker_url = f"http://127.0.0.1:{worker_port}"
        api_url = f"http://127.0.0.1:{api_port}"
        worker = Service(
            push_worker_argv(worker_port),
            env,
            workdir / "push-worker.log",
            worker_url,
        )
        api = Service(
            [sys.executable, "-m", "zpe_api.cli", "serve", "--port", str(api_port)],
            env,
            workdir / "push-api.log",
            api_url,
        )
        store = open_store(push_store_url)
        client = emulator.client()
        stats = ClientStats()
        try:
            worker.start()
            api.start()
            http = Client(api_url, stats, time.monotonic() + 600)
            client.pause_queue(request={"name": queue})
            job_ids: list[str] = []
            for body in bodies:
                response = http.call(
                    "POST",
                    "/calc/zpe/jobs",
                    json=body,
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                assert response is not None and response.status_code in (200, 201), response
                job_ids.append(response.json()["job_id"])
            queued: dict[str, Task] = {}
            for job_id in job_ids:
                job = store.get_job(job_id)
                assert job is not None
                for ref in job.value.tasks:
                    found = store.get_task(ref.task_id)
                    if found is not None and found.value.state is TaskState.QUEUED:
                        queued[ref.task_id] = found.value
            figures.tasks = len(queued)
            settings = Settings(
                **{k[4:].lower(): v for k, v in env.items() if k.startswith("ZPE_")}
            )
            dispatcher = CloudTasksDispatcher(settings, client=client)
            for _ in range(2):  # two more copies of every queued task
                dispatcher.dispatch(list(queued.values()))
            figures.copies_enqueued = len(list(client.list_tasks(request={"parent": queue})))
            # Concurrent deliveries straight to the worker, four at once per task.
            rng = random.Random(seed)
            direct = rng.sample(sorted(queued), k=min(len(queued), max(3, len(queued) // 4)))
            answers: Counter[str] = Counter()
            lock = threading.Lock()

            def deliver(task_id: str, barrier: threading.Barrier) -> None:
                barrier.wait()
                r = httpx.post(
                    f"{worker_url}/internal/tasks/run",
                    json={"task_id": task_id},
                    headers={"X-ZPE-Push-Secret": PUSH_SECRET},
                    timeout=60,
                )
                with lock:
                    answers[f"direct {r.status_code} {r.json().get('outcome', '')}"] += 1

            for task_id in direct:
                barrier = threading.Barrier(4)
                pushers = [
                    threading.Thread(target=deliver, args=(task_id, barrier)) for _ in range(4)
                ]
                for t in pushers:
                    t.start()
                for t in pushers:
                    t.join()
                figures.direct_pushes += 4
            client.resume_queue(request={"name": queue})
            # One SIGKILL of the worker service while the queue drains, then a fresh one.
            time.sleep(1.0)
            worker.stop(signal.SIGKILL)
            figures.worker_kills += 1
            worker.start()
            deadline = time.monotonic() + 300
            states: dict[str, JobState] = {}
            while time.monotonic() < deadline:
                states = {}
                for job_id in job_ids:
                    found_job = store.get_job(job_id)
                    if found_job is not None:
                        states[job_id] = found_job.value.state
                if len(states) == len(job_ids) and all(s.terminal for s in states.values()):
                    break
                time.sleep(0.3)
            figures.done = sum(1 for s in states.values() if s is JobState.DONE)
            figures.failed = sum(1 for s in states.values() if s is JobState.FAILED)
            figures.lost = len(job_ids) - sum(1 for s in states.values() if s.terminal)
            for task_id in queued:
                found = store.get_task(task_id)
                assert found is not None
                if sum(1 for a in found.value.history if a.outcome == "done") > 1:
                    figures.tasks_committed_twice += 1
            clean = clean_results(bodies)
            for i, job_id in enumerate(job_ids):
                if states.get(job_id) is not JobState.DONE:
                    continue
                result = http.call("GET", f"/calc/zpe/jobs/{job_id}/result")
                assert result is not None
                got = result.json()
                zpe, freqs = clean[i]
                same = abs(float(got["zpe_ev"]) - zpe) <= 1e-9 and len(got["freqs_cm"]) == len(
                    freqs
                )
                same = same and all(
                    abs(float(a) - b) <= 1e-6 for a, b in zip(got["freqs_cm"], freqs, strict=True)
                )
                figures.result_mismatches += int(not same)
            http.close()
            figures.deliveries = answers + Counter(
                f"queue {line.get('outcome')}"
                for line in _json_lines(workdir / "push-worker.log")
                if line.get("msg") == "task delivery handled"
            )
            # direct deliveries were logged too: keep the queue's count honest
            for key, count in answers.items():
                outcome = key.rsplit(" ", 1)[-1]
                figures.deliveries[f"queue {outcome}"] -= count
        finally:
            api.stop()
            worker.stop()
            store.close()
    figures.wall_seconds = time.monotonic() - started
    return figures


def check_push(f: PushFigures) -> list[str]:
    problems = []
    if f.lost:
        problems.append(f"push: {f.lost} job(s) lost")
    if f.failed:
        problems.append(f"push: {f.failed} job(s) failed")
    if f.tasks_committed_twice:
        problems.append(f"push: {f.tasks_committed_twice} task(s) committed twice")
    if f.result_mismatches:
        problems.append(f"push: {f.result_mismatches} result(s) differ from the clean run")
    if f.copies_enqueued < 3 * f.tasks:
        problems.append(f"push: only {f.copies_enqueued} copies enqueued for {f.tasks} tasks")
    return problems


# ---------------------------------------------------------------------- report


STORE_NAMES = {
    "redis": "redis-server, append-only file (appendfsync everysec)",
    "gcs": "fake-gcs-server, filesystem backend",
}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


def report_pull(f: PullFigures) -> str:
    rows = [
        ("store", STORE_NAMES.get(f.store, f.store)),
        ("jobs submitted (answered)", f"{f.submitted} of {f.jobs}"),
        ("jobs by size (tasks: jobs)",
         ", ".join(f"{size}: {count}" for size, count in sorted(f.sizes.items()))),
        ("jobs done / failed / lost", f"{f.done} / {f.failed} / {f.lost}"),
        ("jobs in the store (created twice)", f"{f.jobs_in_store} ({f.duplicate_jobs})"),
        ("task refs / distinct tasks", f"{f.task_refs} / {f.tasks_in_store}"),
        ("tasks committed twice (history / log)",
         f"{f.tasks_committed_twice} / {f.commit_log_lines_twice}"),
        ("results differing from a clean run", f"{f.result_mismatches}"),
        ("max |ZPE - clean| eV, max |freq - clean| cm^-1",
         f"{f.max_zpe_diff_ev:.1e}, {f.max_freq_diff_cm:.1e}"),
        ("worker SIGKILLs (restarts)", f"{f.kills} ({f.worker_restarts})"),
        ("worker restart to pull loop (median, max)",
         f"{_median(f.worker_start_seconds):.1f} s, "
         f"{max(f.worker_start_seconds, default=0):.1f} s"),
        ("API SIGKILLs (down for)", f"{f.api_sigkills} ({f.api_down_seconds:.1f} s)"),
        ("store server SIGKILLs / restarts (incl. the outage)",
         f"{f.store_sigkills} / {f.store_restarts}"),
        ("store outage", f"{f.outage_seconds:.1f} s"),
        ("client 503s / 429s / connection errors",
         f"{f.answers_503} / {f.answers_429} / {f.connection_errors}"),
        ("/readyz 503 during the outage", f"{f.readyz_503}"),
        ("lease expiries / releases / failed attempts / dead letters",
         f"{f.lease_expiries} / {f.releases} / {f.failed_attempts} / {f.dead_letters}"),
        ("longest wait for progress after a recovery",
         f"{f.longest_wait_after_recovery_s:.1f} s (after {f.longest_wait_event or '-'})"),
        ("wall time", f"{f.wall_seconds:.0f} s"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def report_push(f: PushFigures) -> str:
    queue = {k[6:]: v for k, v in sorted(f.deliveries.items()) if k.startswith("queue ") and v}
    direct = {k[7:]: v for k, v in sorted(f.deliveries.items()) if k.startswith("direct ")}
    rows = [
        ("jobs done / failed / lost", f"{f.done} / {f.failed} / {f.lost} of {f.jobs}"),
        ("queued tasks / Cloud Tasks enqueued", f"{f.tasks} / {f.copies_enqueued}"),
        ("concurrent direct pushes (4 at once)", f"{f.direct_pushes}"),
        ("queue deliveries by outcome", json.dumps(queue)),
        ("direct deliveries by answer", json.dumps(direct)),
        ("worker service SIGKILLs", f"{f.worker_kills}"),
        ("tasks committed twice", f"{f.tasks_committed_twice}"),
        ("results differing from a clean run", f"{f.result_mismatches}"),
        ("wall time", f"{f.wall_seconds:.0f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def run_all(
    workdir: Path,
    *,
    jobs: int,
    push_jobs: int,
    seed: int,
    outage: float,
    kill_every: tuple[float, float],
    in_flight: int,
    store: str = "redis",
    big_jobs: int = 0,
    deltas: int = 0,
    concurrency: int = 1,
    timeout: float = 900.0,
) -> tuple[PullFigures, PushFigures | None, list[str]]:
    server = store_server(store)
    if not server.available():
        raise RuntimeError(f"{server.name} server is not available ({server.runtime})")
    saved = {name: os.environ.get(name) for name in store_env(server)}
    with server:
        os.environ.update(store_env(server))  # this process reads the store at the end
        try:
            pull = PullChaos(
                workdir,
                server,
                jobs=jobs,
                seed=seed,
                big_jobs=big_jobs,
                deltas=deltas,
                outage_seconds=outage,
                kill_every=kill_every,
                in_flight=in_flight,
                concurrency=concurrency,
                timeout=timeout,
            ).run()
            problems = check_pull(pull)
            push = None
            if push_jobs:
                push = run_push(workdir, server, jobs=push_jobs, seed=seed)
                problems += check_push(push)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    return pull, push, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=STORES, default="redis", help="the store server")
    parser.add_argument("--jobs", type=int, default=200, help="mock jobs through http-pull")
    parser.add_argument("--big-jobs", type=int, default=3, help="of them, 385-task jobs")
    parser.add_argument(
        "--deltas", type=int, default=0, help="distinct deltas of the small jobs (0: each its own)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="tasks per pull worker")
    parser.add_argument(
        "--kill-every", type=float, nargs=2, default=(3.0, 5.0), metavar=("MIN", "MAX"),
        help="seconds between worker SIGKILLs",
    )  # fmt: skip
    parser.add_argument("--push-jobs", type=int, default=12, help="jobs through Cloud Tasks")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--outage", type=float, default=6.0, help="store outage seconds")
    parser.add_argument("--in-flight", type=int, default=24, help="jobs the client keeps open")
    parser.add_argument("--timeout", type=float, default=1800.0, help="bound of phase 1 (s)")
    parser.add_argument("--workdir", help="logs go here (default: a temporary directory)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or f"/tmp/zpe-chaos-{uuid.uuid4().hex[:8]}")
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"logs in {workdir}; store {args.store}; load: {os.getloadavg()}")
    pull, push, problems = run_all(
        workdir,
        jobs=args.jobs,
        push_jobs=args.push_jobs,
        seed=args.seed,
        outage=args.outage,
        kill_every=tuple(args.kill_every),
        in_flight=args.in_flight,
        store=args.store,
        big_jobs=args.big_jobs,
        deltas=args.deltas,
        concurrency=args.concurrency,
        timeout=args.timeout,
    )
    print(
        f"\nphase 1: http-pull, 3 workers x {args.concurrency} slots, {args.store} "
        f"— load {os.getloadavg()}"
    )
    print(report_pull(pull))
    if push is not None:
        print("\nphase 2: cloud-tasks emulator, duplicated and concurrent deliveries")
        print(report_push(push))
    for line in pull.failures[:20] + (push.failures[:20] if push else []):
        print(f"  ! {line}")
    print("\nverdict:", "PASS" if not problems else "FAIL: " + "; ".join(problems))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
