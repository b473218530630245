"""Polling load: ``GET /calc/zpe/jobs/{id}`` against ``/healthz`` on ONE API process.

For each store (``file``, ``redis``: a ``redis-server`` started with ``RedisServer``
from ``tests/fixtures/servers.py``) the bench first builds three jobs in the store
itself (``JobService`` + ``run_task``, mock engine, owner ``anonymous``):

- ``small``: ``samples/h2_zpe.in`` (13 tasks), finished;
- ``big``: ``cluster_input(32)`` of ``tests/fixtures/store_writes.py`` (64 mobile
  atoms, 385 tasks), finished;
- ``running``: the same molecule at another ``delta`` (385 tasks) with half of its
  tasks run: a running job whose progress is counted from its ``done/`` markers.

Then, per ``--variants`` entry, it starts one API process on that store
(``ZPE_EXECUTION_MODE=http-pull`` and no worker, so the running job stays running)
and measures, on that same process, ``/healthz`` and the status route of each job
plain (200 + JSON) and with ``If-None-Match: <its ETag>`` (304):

- ``max``: closed loop, ``--conns`` keep-alive connections each sending its next
  request when the answer arrives; its req/s against ``/healthz``'s in the same run
  is the **ratio** (how close the route is to the framework's floor);
- ``open``: open loop at ``--rate`` req/s (requests on a fixed schedule, latency from
  the scheduled instant, so a saturated server shows up as queueing): p50/p99.

Variants: ``before`` = ``git archive`` of ``--before`` (default ``main``; API, core
and client sources on ``PYTHONPATH``) served with uvicorn's asyncio loop + h11;
``after-h11`` = this tree, asyncio + h11; ``after`` = this tree, uvicorn's ``auto``
(uvloop + httptools when installed). With ``--pin`` (default) the API process runs
on CPU 0 and the load generator (one process, a minimal asyncio HTTP/1.1 keep-alive
client, no library) on CPU 1. ``ZPE_POLL_RATE_PER_SECOND=0``: the per-user poll
limiter is **off** (all load comes from one loopback address, i.e. one anonymous
user). Also reported: the API's CPU ms per request (``/proc/PID/stat``), answers
other than the expected 200/304, and its peak RSS (``VmHWM``).

``--rss-modes inprocess http-pull cloud-tasks``: per variant and mode, a fresh API
(with its 2 in-process workers, 1 pull worker, or the Cloud Tasks emulator and a
worker service, as in ``bench/queue_throughput.py``) runs a warm-up job and one H2
job to done; the API process's ``VmHWM`` after that is printed.

    uv run python bench/polling_load.py [--stores file redis] [--seconds 3] \
        [--variants before after-h11 after] [--rss-modes inprocess http-pull cloud-tasks]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import percentile, status_kib  # noqa: E402
from bench.queue_throughput import (  # noqa: E402
    ADMIN,
    Proc,
    base_env,
    start_pull_workers,
    submit_and_wait,
)
from tests.fixtures.cloud_tasks import TasksEmulator, ensure_emulator_venv  # noqa: E402
from tests.fixtures.servers import RedisServer, free_port, push_worker_argv  # noqa: E402
from tests.fixtures.store_writes import cluster_input  # noqa: E402
from zpe_client.models import JobRequest  # noqa: E402
from zpe_core.control.api_keys import ANONYMOUS  # noqa: E402
from zpe_core.jobs.runner import run_task  # noqa: E402
from zpe_core.jobs.service import JobService  # noqa: E402
from zpe_core.settings import Settings  # noqa: E402
from zpe_core.store import open_store  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process (all its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------- load generator


class Conn:
    """One keep-alive HTTP/1.1 connection; ``get`` returns the status code."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        code = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"content-length:")
        if at >= 0:
            end = lower.find(b"\r\n", at)
            length = int(lower[at + 15 : end])
            if length:
                await self.reader.readexactly(length)
        return code


async def _connect(port: int) -> Conn:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return Conn(reader, writer)


async def _open_loop(
    port: int, request: bytes, rate: float, seconds: float, conns: int
) -> tuple[list[float], Counter[int], float]:
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await _connect(port))
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    loop = asyncio.get_running_loop()
    total = int(rate * seconds)
    pending: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        conn = await pool.get()
        try:
            code = await conn.get(request)
        except (OSError, asyncio.IncompleteReadError):
            code = 0
            conn = await _connect(port)
        latencies.append(loop.time() - scheduled)
        codes[code] += 1
        pool.put_nowait(conn)

    start = loop.time() + 0.05
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    return latencies, codes, loop.time() - start


async def _closed_loop(
    port: int, request: bytes, seconds: float, conns: int
) -> tuple[list[float], Counter[int], float]:
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    loop = asyncio.get_running_loop()
    clients = [await _connect(port) for _ in range(conns)]
    start = loop.time()
    deadline = start + seconds

    async def worker(conn: Conn) -> None:
        while loop.time() < deadline:
            t0 = loop.time()
            try:
                code = await conn.get(request)
            except (OSError, asyncio.IncompleteReadError):
                code = 0
                conn = await _connect(port)
            latencies.append(loop.time() - t0)
            codes[code] += 1

    await asyncio.gather(*(worker(c) for c in clients))
    return latencies, codes, loop.time() - start


def generate(
    kind: str,
    port: int,
    path: str,
    etag: str | None,
    rate: float,
    seconds: float,
    conns: int,
    cpu: int | None = None,
) -> tuple[list[float], dict[int, int], float]:
    """One generator process: open loop at ``rate`` or closed loop over ``conns``."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    extra = f"If-None-Match: {etag}\r\n" if etag else ""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()
    if kind == "open":
        lat, codes, wall = asyncio.run(_open_loop(port, request, rate, seconds, conns))
    else:
        lat, codes, wall = asyncio.run(_closed_loop(port, request, seconds, conns))
    return lat, dict(codes), wall


# ----------------------------------------------------------------- the runs


def prepare_jobs(store_url: str) -> dict[str, str]:
    """Build the ``small`` and ``big`` finished jobs and the half-run ``running`` one."""
    store = open_store(store_url)
    service = JobService(store, None, Settings(default_engine="mock", mock_delay_seconds=0.0))
    small = (ROOT / "samples" / "h2_zpe.in").read_text()
    big = cluster_input(32)
    jobs: dict[str, str] = {}
    try:
        for name, text, delta, share in (
            ("small", small, 0.01, 1.0),
            ("big", big, 0.01, 1.0),
            ("running", big, 0.0125, 0.5),
        ):
            request = JobRequest(input_text=text, engine="mock", symmetry="off", delta=delta)
            job, _ = service.submit(request, owner=ANONYMOUS)
            task_ids = list(dict.fromkeys(ref.task_id for ref in job.tasks))
            for task_id in task_ids[: round(share * len(task_ids))]:
                run_task(service, task_id, "bench")
            found = store.get_job(job.job_id)
            assert found is not None
            print(
                f"  job {name}: {job.job_id}, {len(task_ids)} tasks, "
                f"{len(store.done_task_ids(job.job_id))} done markers, {found.value.state.value}",
                flush=True,
            )
            jobs[name] = job.job_id
    finally:
        store.close()
    return jobs


# ----------------------------------------------------------------- the API under test

#: Serves the API like ``zpe serve``, with an explicit event loop and HTTP parser.
LAUNCH = """
import os, sys, uvicorn
from zpe_core.observability.logs import configure_logging
configure_logging(os.environ.get("ZPE_LOG_LEVEL", "WARNING"))
from zpe_api.main import create_app
uvicorn.run(create_app(), host="127.0.0.1", port=int(sys.argv[1]), loop=sys.argv[2],
            http=sys.argv[3], log_config=None)
"""

#: variant -> (code, uvicorn loop, uvicorn http)
VARIANTS = {
    "before": ("before", "asyncio", "h11"),
    "after-h11": ("after", "asyncio", "h11"),
    "after": ("after", "auto", "auto"),
}


def extract_sources(commit: str, into: Path) -> dict[str, str]:
    """The API, core and client sources of ``commit``, as a PYTHONPATH to run them from."""
    dirs = ["services/api/src", "libs/zpe_core/src", "libs/zpe_client/src"]
    archive = subprocess.run(
        ["git", "archive", commit, *dirs], cwd=ROOT, capture_output=True, check=True
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return {"PYTHONPATH": os.pathsep.join(str(into / d) for d in dirs)}


def start_api(
    variant: str, env: dict[str, str], workdir: Path, code_env: dict[str, dict[str, str]]
) -> tuple[Proc, int]:
    code, loop, http = VARIANTS[variant]
    port = free_port()
    api = Proc(
        [sys.executable, "-c", LAUNCH, str(port), loop, http],
        {**env, **code_env[code]},
        workdir / f"api-{variant}.log",
    )
    api.wait_http(f"http://127.0.0.1:{port}/readyz")
    return api, port


def measure(
    port: int, path: str, etag: str | None, kind: str, args: argparse.Namespace, pid: int
) -> tuple[float, float, float, float, int]:
    """req/s, p50 ms, p99 ms, API CPU ms/req and unexpected answers of one phase."""
    ctx = multiprocessing.get_context("fork")
    cpu = 1 if args.pin else None
    with ProcessPoolExecutor(args.procs, mp_context=ctx) as pool:
        cpu0 = cpu_seconds(pid)
        futures = [
            pool.submit(
                generate,
                kind,
                port,
                path,
                etag,
                args.rate / args.procs,
                args.seconds,
                args.conns,
                cpu,
            )
            for _ in range(args.procs)
        ]
        lat: list[float] = []
        codes: Counter[int] = Counter()
        wall = 0.0
        for f in futures:
            part, part_codes, part_wall = f.result()
            lat += part
            codes.update(part_codes)
            wall = max(wall, part_wall)
        cpu_ms = (cpu_seconds(pid) - cpu0) * 1000 / max(1, len(lat))
    expected = 200 if etag is None else 304
    bad = sum(n for code, n in codes.items() if code != expected)
    p50, p99 = percentile(lat, 0.5) * 1000, percentile(lat, 0.99) * 1000
    return len(lat) / wall, p50, p99, cpu_ms, bad


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def run_polling(
    variant: str,
    store: str,
    store_url: str,
    jobs: dict[str, str],
    workdir: Path,
    args: argparse.Namespace,
    code_env: dict[str, dict[str, str]],
) -> list[str]:
    """Every target, closed then open loop, on one fresh API process of ``variant``."""
    env = {**base_env(store_url, "http-pull"), "ZPE_ADMIN_TOKEN": ADMIN}
    api, port = start_api(variant, env, workdir, code_env)
    pid = api.proc.pid
    rows: list[str] = []
    try:
        if args.pin:
            for thread in os.listdir(f"/proc/{pid}/task"):  # every thread of the API on CPU 0
                os.sched_setaffinity(int(thread), {0})
        targets: list[tuple[str, str, str | None]] = [("healthz", "/healthz", None)]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for name, job_id in jobs.items():
                path = f"/calc/zpe/jobs/{job_id}"
                answer = client.get(path)
                answer.raise_for_status()
                body, etag = answer.json(), answer.headers["ETag"]
                print(
                    f"[{variant}/{store}] {name}: {body['state']}, "
                    f"{body['progress']['done']}/{body['progress']['total']} done, "
                    f"{len(answer.content)} B, ETag {etag}, "
                    f"Retry-After {answer.headers.get('Retry-After')}",
                    flush=True,
                )
                targets += [(f"{name} 200", path, None), (f"{name} 304", path, etag)]
            for _, path, _ in targets:  # warm up every route
                for _ in range(100):
                    client.get(path)
        floor = 0.0
        for target, path, etag in targets:
            before = load()
            rps, _, _, cpu_max, bad_max = measure(port, path, etag, "closed", args, pid)
            _, p50, p99, cpu_open, bad_open = measure(port, path, etag, "open", args, pid)
            floor = floor or rps
            row = (
                f"| {variant} | {store} | {target} | {rps:,.0f} | {rps / floor:.2f} | "
                f"{p50:.1f} | {p99:.1f} | {cpu_max:.2f} / {cpu_open:.2f} | "
                f"{bad_max + bad_open} | {before} |"
            )
            rows.append(row)
            print(row, flush=True)
        hwm = status_kib(pid, "VmHWM")
        rows.append(
            f"| {variant} | {store} | API VmHWM (peak RSS) | {hwm / 1024:.1f} MiB "
            f"| | | | | | {load()} |"
        )
        print(rows[-1], flush=True)
    finally:
        api.stop()
    return rows


def rss_after_job(
    variant: str, mode: str, store_url: str, workdir: Path, code_env: dict[str, dict[str, str]]
) -> str:
    """The API's VmHWM after a warm-up job and one H2 job in ``mode`` (a fresh API)."""
    env = base_env(store_url, mode)
    procs: list[Proc] = []
    emulator: TasksEmulator | None = None
    try:
        if mode == "inprocess":
            env["ZPE_INPROCESS_CONCURRENCY"] = "2"
        elif mode == "http-pull":
            env["ZPE_ADMIN_TOKEN"] = ADMIN
        elif mode == "cloud-tasks":
            binary = ensure_emulator_venv()
            if binary is None:
                return f"| {variant} | {mode} | emulator unavailable | | |"
            emulator = TasksEmulator(binary).__enter__()
            worker_port = free_port()
            env.update(
                ZPE_TASKS_QUEUE=emulator.create_queue(),
                ZPE_WORKER_URL=f"http://127.0.0.1:{worker_port}",
                ZPE_TASKS_EMULATOR_HOST=emulator.host,
                ZPE_PUSH_SHARED_SECRET="bench-push-secret",
            )
            worker = Proc(
                push_worker_argv(worker_port),
                env,
                workdir / f"worker-{variant}.log",
            )
            procs.append(worker)
            worker.wait_http(f"http://127.0.0.1:{worker_port}/healthz")
        else:
            raise SystemExit(f"unknown mode {mode}")
        api, port = start_api(variant, env, workdir, code_env)
        procs.insert(0, api)
        url = f"http://127.0.0.1:{port}"
        if mode == "http-pull":
            procs += start_pull_workers(url, 1, workdir)
        submit_and_wait(url, 1)
        rss = status_kib(api.proc.pid, "VmRSS")
        hwm = status_kib(api.proc.pid, "VmHWM")
        return f"| {variant} | {mode} | {hwm / 1024:.1f} MiB | {rss / 1024:.1f} MiB | {load()} |"
    finally:
        for proc in reversed(procs):
            proc.stop()
        if emulator is not None:
            emulator.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stores", nargs="*", default=["file", "redis"])
    parser.add_argument("--variants", nargs="+", default=["before", "after-h11", "after"])
    parser.add_argument("--before", default="main", help="the commit of the 'before' variant")
    parser.add_argument("--seconds", type=float, default=3.0, help="per phase")
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop offered req/s")
    parser.add_argument("--procs", type=int, default=1, help="load generator processes")
    parser.add_argument("--conns", type=int, default=16, help="connections per generator")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--rss-modes", nargs="*", default=[])
    args = parser.parse_args()
    for variant in args.variants:
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant}; choose from {sorted(VARIANTS)}")
    print(f"load average before: {load()}; nproc={os.cpu_count()}", flush=True)
    print(
        f"generator: {args.procs} process(es) x {args.conns} keep-alive connections on "
        f"loopback{', pinned to CPU 1 (API on CPU 0)' if args.pin else ''}; "
        "ZPE_POLL_RATE_PER_SECOND=0 (limiter off)",
        flush=True,
    )
    rows: list[str] = []
    rss_rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        code_env: dict[str, dict[str, str]] = {"after": {}}
        if any(VARIANTS[v][0] == "before" for v in args.variants):
            code_env["before"] = extract_sources(args.before, Path(tmp) / "before")
        with RedisServer() as redis:
            urls = {"file": f"file://{tmp}/store", "redis": redis.url}
            for store in args.stores:
                print(f"[{store}] building the jobs", flush=True)
                jobs = prepare_jobs(urls[store])
                for variant in args.variants:
                    workdir = Path(tmp) / f"{store}-{variant}"
                    workdir.mkdir()
                    rows += run_polling(variant, store, urls[store], jobs, workdir, args, code_env)
        for mode in args.rss_modes:
            for variant in args.variants:
                workdir = Path(tmp) / f"rss-{mode}-{variant}"
                workdir.mkdir()
                store_url = f"file://{workdir}/store"
                rss_rows.append(rss_after_job(variant, mode, store_url, workdir, code_env))
                print(rss_rows[-1], flush=True)
    print(f"load average after: {load()}")
    print()
    print(
        "| variant | store | request | max req/s | vs /healthz | open p50 ms | open p99 ms "
        "| API CPU ms/req (max / open) | other answers | load avg before |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        print(row)
    if rss_rows:
        print()
        print("| variant | mode | API VmHWM after the job | VmRSS | load avg after |")
        print("|---|---|---:|---:|---|")
        for row in rss_rows:
            print(row)


if __name__ == "__main__":
    main()
