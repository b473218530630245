"""Throughput: mock jobs submit -> done per execution mode, against RQ and ARQ.

One run, one ``redis-server`` (``RedisServer`` from ``tests/fixtures/servers.py``),
``--workers`` W workers everywhere, ``--jobs`` N jobs of ``samples/h2_zpe.in``
(13 mock tasks each; every job a distinct ``delta`` so nothing is reused):

- ``inprocess``: ``zpe serve`` on the redis store, ``ZPE_INPROCESS_CONCURRENCY=W``
  worker processes;
- ``http-pull``: ``zpe serve`` in http-pull mode on the redis store and W
  ``zpe-worker pull`` processes (enrolled with enroll tokens);
- ``cloud-tasks``: ``zpe serve`` in cloud-tasks mode enqueueing into the Cloud
  Tasks emulator (``.cache/tasks-emulator-venv``, as the tests use), which POSTs
  each task to one ``zpe-worker serve`` process (it runs pushed tasks on its
  thread pool); skipped with the reason printed if the emulator cannot start;
- ``rq`` / ``arq``: N x 13 no-op tasks (the same units of work) enqueued at once
  on the same redis-server (their own database numbers) and run by W ``rq worker``
  (default forking worker) / W ``arq`` worker processes (default ``max_jobs``).
  They run from their own virtualenv (``.cache/bench-queues-venv``, created with
  ``uv venv`` + ``uv pip install rq arq`` when missing) as subprocesses, so the
  project's dependencies do not change.

Every system first runs one warm-up job (workers started and imported), then the
clock runs from the first submit/enqueue to the last job done (our modes: the
client polls each pending job's status every 50 ms, or with ``--poll oldest`` only the
oldest pending one every 20 ms; RQ/ARQ: the finished-job registry / result keys are
counted every 20 ms). Prints jobs/s, tasks/s and ratios vs ARQ; for the in-process
modes also the CPU seconds of the API process, of its pool and of redis-server while
the clock ran, and the number of status GETs.

    uv run python bench/queue_throughput.py [--jobs 20 --workers 2 --poll each|oldest]
        [--systems inprocess-before inprocess arq --before main]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.cloud_tasks import TasksEmulator, ensure_emulator_venv  # noqa: E402
from tests.fixtures.servers import (  # noqa: E402
    RedisServer,
    free_port,
    push_worker_argv,
    wait_until_up,
)

SAMPLE = (ROOT / "samples" / "h2_zpe.in").read_text()
TASKS_PER_JOB = 13  # H2: 2 atoms x 3 directions x 2 signs + the reference point


def job_body(i: int) -> dict[str, object]:
    """Job ``i``: H2 with its second atom moved by ``i + 1`` x 1e-5 A and ``symmetry`` off, so
    all 13 points are computed and none is shared with another job (with symmetry H2
    needs 4, and jobs of one geometry share the reference point)."""
    moved = f"{5.375 + (i + 1) * 1e-5:.6f}"
    text = SAMPLE.replace("5.000000  5.375000", f"5.000000  {moved}")
    assert text != SAMPLE
    return {"input_text": text, "delta": 0.01 + (i + 1) * 1e-6, "symmetry": "off"}


ADMIN = "bench-admin-token-0123456789abcdef"
QUEUES_VENV = ROOT / ".cache" / "bench-queues-venv"

# ---------------------------------------------------------------- RQ / ARQ side

TASKS_MODULE = """
import os
from arq.connections import RedisSettings


def noop(*args, **kwargs):
    return None


async def anoop(ctx, *args, **kwargs):
    return None


class WorkerSettings:
    functions = [anoop]
    redis_settings = RedisSettings.from_dsn(os.environ["BENCH_ARQ_URL"])
"""

DRIVER = """
import asyncio, json, os, subprocess, sys, time

kind, url, n, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bindir = os.path.dirname(sys.executable)
env = dict(os.environ, BENCH_ARQ_URL=url)


def start(argv):
    return [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for _ in range(workers)]


def cpu(procs):
    # CPU seconds of the worker processes (and of this driver) so far.
    total = time.process_time()
    for p in procs:
        fields = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def redis_cpu(info):
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def stop(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


if kind == "rq":
    from redis import Redis
    from rq import Queue
    from rq.registry import FinishedJobRegistry
    conn = Redis.from_url(url)
    conn.flushdb()
    q = Queue("bench", connection=conn)
    procs = start([os.path.join(bindir, "rq"), "worker", "-u", url, "bench", "-q"])
    try:
        registry = FinishedJobRegistry(queue=q)
        q.enqueue("bq_tasks.noop")  # warm-up: the workers are up and importing
        while registry.count < 1:
            time.sleep(0.02)
        t0, cpu0, redis0 = time.perf_counter(), cpu(procs), redis_cpu(conn.info("cpu"))
        q.enqueue_many([Queue.prepare_data("bq_tasks.noop") for _ in range(n)])
        while registry.count < n + 1:
            time.sleep(0.02)
        wall, used = time.perf_counter() - t0, cpu(procs) - cpu0
        on_redis = redis_cpu(conn.info("cpu")) - redis0
    finally:
        stop(procs)
else:
    from arq import create_pool
    from arq.connections import RedisSettings

    async def run():
        redis = await create_pool(RedisSettings.from_dsn(url))
        await redis.flushdb()
        procs = start([os.path.join(bindir, "arq"), "bq_tasks.WorkerSettings"])
        try:
            async def done():
                return len(await redis.keys("arq:result:*"))
            await redis.enqueue_job("anoop")
            while await done() < 1:
                await asyncio.sleep(0.02)
            t0, cpu0 = time.perf_counter(), cpu(procs)
            redis0 = redis_cpu(await redis.info("cpu"))
            for _ in range(n):
                await redis.enqueue_job("anoop")
            while await done() < n + 1:
                await asyncio.sleep(0.02)
            wall, used = time.perf_counter() - t0, cpu(procs) - cpu0
            return wall, used, redis_cpu(await redis.info("cpu")) - redis0
        finally:
            stop(procs)
            await redis.close()

    wall, used, on_redis = asyncio.run(run())
print(json.dumps({"wall": wall, "cpu": used, "redis": on_redis}))
"""


def queues_python() -> Path:
    python = QUEUES_VENV / "bin" / "python"
    if not (QUEUES_VENV / "bin" / "arq").exists() or not (QUEUES_VENV / "bin" / "rq").exists():
        uv = shutil.which("uv") or "uv"
        subprocess.run([uv, "venv", "-q", "--allow-existing", str(QUEUES_VENV)], check=True)
        subprocess.run(
            [uv, "pip", "install", "-q", "--python", str(python), "rq", "arq"], check=True
        )
    return python


def run_queue(kind: str, redis_url: str, n_tasks: int, workers: int, workdir: Path) -> float:
    """Run the RQ or ARQ driver; prints the CPU seconds of its workers and driver and of
    redis-server while its clock ran."""
    (workdir / "bq_tasks.py").write_text(TASKS_MODULE)
    (workdir / "bq_driver.py").write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(workdir)}
    env.pop("VIRTUAL_ENV", None)
    out = subprocess.run(
        [str(queues_python()), str(workdir / "bq_driver.py"), kind, redis_url, str(n_tasks),
         str(workers)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{kind} driver failed: {out.stderr[-2000:]}")
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    wall: float = answer["wall"]
    print(
        f"  CPU s in {wall:.2f} s: workers + driver {answer['cpu']:.2f}, "
        f"redis {answer['redis']:.2f}",
        flush=True,
    )
    return wall


# ---------------------------------------------------------------- our execution modes


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.log = log
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_http(self, url: str, timeout: float = 90) -> None:
        wait_until_up(url, self.proc, log=self.log, timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def base_env(store_url: str, mode: str) -> dict[str, str]:
    return {
        **os.environ,
        "ZPE_STORE_URL": store_url,
        "ZPE_EXECUTION_MODE": mode,
        "ZPE_DEFAULT_ENGINE": "mock",
        "ZPE_MOCK_DELAY_SECONDS": "0",
        "ZPE_LOG_LEVEL": "WARNING",
        "ZPE_POLL_RATE_PER_SECOND": "0",  # the bench polls every job every 50 ms
        "ZPE_MAX_ACTIVE_JOBS_PER_OWNER": "100000",
    }


#: How the client learns that the jobs are done: ``each`` pending job every 50 ms (the
#: recorded figures of issue 8), or ``oldest``: the oldest pending job, the next one at
#: once when it is done, else again after 20 ms (one GET at a time, as often as the ARQ
#: driver counts its results).
POLL = {"mode": "each"}


def submit_and_wait(
    api: str, n: int, timeout: float = 600, *, cpu: Callable[[], dict[str, float]] | None = None
) -> float:
    """Warm-up job, then N jobs at once; seconds from the first submit to the last done.

    ``cpu``: CPU seconds by process, read at the start and at the end; the difference and
    the number of status requests are printed.
    """
    gets = [0]
    with httpx.Client(base_url=api, timeout=60) as client:

        def state_of(job_id: str) -> str:
            gets[0] += 1
            state: str = client.get(f"/calc/zpe/jobs/{job_id}").json()["state"]
            if state in ("failed", "cancelled"):
                raise RuntimeError(f"job {job_id} {state}")
            return state

        def submit(i: int) -> str:
            answer = client.post("/calc/zpe/jobs", json=job_body(i))
            if answer.status_code != 201:
                raise RuntimeError(f"submit: {answer.status_code} {answer.text}")
            job_id: str = answer.json()["job_id"]
            return job_id

        def wait(ids: list[str]) -> None:
            pending = list(ids)
            deadline = time.monotonic() + timeout
            while pending:
                if POLL["mode"] == "oldest":
                    if state_of(pending[0]) == "done":
                        pending.pop(0)
                        continue
                    period = 0.02
                else:
                    pending = [job_id for job_id in pending if state_of(job_id) != "done"]
                    period = 0.05
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(pending)} jobs not done in {timeout} s")
                if pending:
                    time.sleep(period)

        warm = submit(10_000)
        wait([warm])  # warm-up
        progress = client.get(f"/calc/zpe/jobs/{warm}").json()["progress"]
        if (progress["total"], progress["reused"]) != (TASKS_PER_JOB, 0):
            raise RuntimeError(f"a job is not {TASKS_PER_JOB} computed tasks: {progress}")
        cpu0 = cpu() if cpu is not None else {}
        gets[0] = 0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(submit, range(n)))
        wait(ids)
        wall = time.perf_counter() - t0
        if cpu is not None:
            used = {name: seconds - cpu0.get(name, 0.0) for name, seconds in cpu().items()}
            listed = ", ".join(f"{name} {seconds:.2f}" for name, seconds in used.items())
            print(f"  CPU s in {wall:.2f} s: {listed}; {gets[0]} status GETs", flush=True)
        return wall


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def api_cpu(api: Proc, store_url: str) -> Callable[[], dict[str, float]]:
    """CPU seconds of the API process, of its child processes (the in-process pool) and of
    redis-server (its ``INFO cpu``)."""
    client = redis.Redis.from_url(store_url.split("?", 1)[0])

    def read() -> dict[str, float]:
        info = client.info("cpu")
        return {
            "api": _cpu_of(api.proc.pid),
            "pool": sum(_cpu_of(child) for child in _children(api.proc.pid)),
            "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        }

    return read


def api_proc(env: dict[str, str], workdir: Path) -> tuple[Proc, str]:
    port = free_port()
    api = Proc(
        [sys.executable, "-m", "zpe_api.cli", "serve", "--port", str(port)],
        env,
        workdir / "api.log",
    )
    url = f"http://127.0.0.1:{port}"
    api.wait_http(f"{url}/readyz")
    return api, url


def source_tree(commit: str, into: Path, dirs: tuple[str, ...]) -> dict[str, str]:
    """The source directories ``dirs`` of ``commit`` (``git archive``), as a PYTHONPATH to
    run them from (ahead of the editable installs of the work tree)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", commit, *dirs], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return {"PYTHONPATH": os.pathsep.join(str(into / d) for d in dirs)}


#: What ``zpe serve`` (the API with its in-process pool) runs from.
API_SOURCES = ("services/api/src", "libs/zpe_core/src", "libs/zpe_client/src")


def run_inprocess(
    store_url: str, n: int, workers: int, workdir: Path, *, commit: str | None = None
) -> float:
    """``zpe serve`` in-process mode; with ``commit``: the API and core of that commit."""
    env = {**base_env(store_url, "inprocess"), "ZPE_INPROCESS_CONCURRENCY": str(workers)}
    if commit is not None:
        env.update(source_tree(commit, workdir / "src", API_SOURCES))
    api, url = api_proc(env, workdir)
    try:
        return submit_and_wait(url, n, cpu=api_cpu(api, store_url))
    finally:
        api.stop()


def start_pull_workers(
    url: str,
    workers: int,
    workdir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> list[Proc]:
    """Enroll ``workers`` mock-engine pull workers with the API at ``url`` and start them."""
    procs: list[Proc] = []
    for i in range(workers):
        token = httpx.post(
            f"{url}/calc/zpe/compute/enroll-tokens",
            json={},
            headers={"Authorization": f"Bearer {ADMIN}"},
        ).json()["token"]
        wenv = {**os.environ, "ZPE_MOCK_DELAY_SECONDS": "0", "ZPE_LOG_LEVEL": "WARNING"}
        wenv.pop("ZPE_STORE_URL", None)
        wenv.update(extra_env or {})
        argv = [
            sys.executable, "-m", "zpe_worker.cli", "pull",
            "--api", url,
            "--token-file", str(workdir / f"w{i}.token.json"),
            "--enroll-token", token,
            "--name", f"bench-w{i}",
            "--engines", "mock",
            "--poll-wait", "1",
            *extra_args,
        ]  # fmt: skip
        procs.append(Proc(argv, wenv, workdir / f"w{i}.log"))
    return procs


def run_pull(store_url: str, n: int, workers: int, workdir: Path) -> float:
    env = {**base_env(store_url, "http-pull"), "ZPE_ADMIN_TOKEN": ADMIN}
    api, url = api_proc(env, workdir)
    procs: list[Proc] = []
    try:
        procs = start_pull_workers(url, workers, workdir)
        return submit_and_wait(url, n)
    finally:
        for p in procs:
            p.stop()
        api.stop()


def run_cloud_tasks(store_url: str, n: int, workdir: Path) -> float:
    binary = ensure_emulator_venv()
    if binary is None:
        raise RuntimeError("gcloud-tasks-emulator virtualenv could not be created")
    with TasksEmulator(binary) as emulator:
        queue = emulator.create_queue()
        worker_port = free_port()
        env = {
            **base_env(store_url, "cloud-tasks"),
            "ZPE_TASKS_QUEUE": queue,
            "ZPE_WORKER_URL": f"http://127.0.0.1:{worker_port}",
            "ZPE_TASKS_EMULATOR_HOST": emulator.host,
            "ZPE_PUSH_SHARED_SECRET": "bench-push-secret",
        }
        worker = Proc(
            push_worker_argv(worker_port),
            env,
            workdir / "worker.log",
        )
        try:
            worker.wait_http(f"http://127.0.0.1:{worker_port}/healthz")
            api, url = api_proc(env, workdir)
            try:
                return submit_and_wait(url, n)
            finally:
                api.stop()
        finally:
            worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--systems",
        nargs="+",
        default=["inprocess", "http-pull", "cloud-tasks", "rq", "arq"],
        help="also: inprocess-before (the in-process mode of --before)",
    )
    parser.add_argument("--before", default="main", help="commit of inprocess-before")
    parser.add_argument("--poll", choices=["each", "oldest"], default="each")
    args = parser.parse_args()
    n, w = args.jobs, args.workers
    POLL["mode"] = args.poll
    before = subprocess.run(
        ["git", "rev-parse", "--short", args.before], cwd=ROOT, capture_output=True, text=True,
        check=True,
    ).stdout.strip()  # fmt: skip
    n_tasks = n * TASKS_PER_JOB
    print(f"load average before: {os.getloadavg()}; nproc={os.cpu_count()}", flush=True)
    print(f"{n} jobs x {TASKS_PER_JOB} tasks = {n_tasks} units of work, W={w}", flush=True)
    results: dict[str, float | str] = {}
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis:
        base = f"redis://127.0.0.1:{redis.port}"
        runners: dict[str, Callable[[Path], float]] = {
            "inprocess": lambda d: run_inprocess(
                f"{base}/0?namespace=inproc-{uuid.uuid4().hex[:8]}", n, w, d
            ),
            "inprocess-before": lambda d: run_inprocess(
                f"{base}/0?namespace=before-{uuid.uuid4().hex[:8]}", n, w, d, commit=before
            ),
            "http-pull": lambda d: run_pull(
                f"{base}/0?namespace=pull-{uuid.uuid4().hex[:8]}", n, w, d
            ),
            "cloud-tasks": lambda d: run_cloud_tasks(
                f"{base}/0?namespace=ct-{uuid.uuid4().hex[:8]}", n, d
            ),
            "rq": lambda d: run_queue("rq", f"{base}/1", n_tasks, w, d),
            "arq": lambda d: run_queue("arq", f"{base}/2", n_tasks, w, d),
        }
        for name in args.systems:
            workdir = Path(tmp) / name
            workdir.mkdir()
            try:
                results[name] = runners[name](workdir)
                wall = results[name]
                print(
                    f"{name}: {wall:.2f} s, {n / wall:.2f} jobs/s, {n_tasks / wall:.1f} tasks/s "
                    f"(load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
            except Exception as exc:  # report and go on with the other systems
                results[name] = f"not run: {exc}"[:300]
                print(f"{name}: {results[name]}", flush=True)
    print(f"load average after: {os.getloadavg()}")
    arq = results.get("arq")
    print()
    print("| system | wall s | jobs/s | tasks/s | vs ARQ |")
    print("|---|---:|---:|---:|---:|")
    for name, value in results.items():
        if isinstance(value, str):
            print(f"| {name} | {value} | | | |")
            continue
        ratio = f"{arq / value:.2f}x" if isinstance(arq, float) else "-"
        print(f"| {name} | {value:.2f} | {n / value:.2f} | {n_tasks / value:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
