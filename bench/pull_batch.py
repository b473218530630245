"""http-pull throughput: one task per round trip against batched leases (issue 17, item 2).

One ``redis-server`` (``RedisServer``), and per variant a fresh ``zpe serve`` in
http-pull mode on it (its own namespace) with ``--workers`` W ``zpe-worker pull``
processes (mock engine, no delay). Each variant runs one warm-up job, then submits
``--jobs`` N distinct jobs of ``samples/h2_zpe.in`` at once (``job_body`` of
``bench/queue_throughput.py``: symmetry off and a geometry of its own each, so all 13
points of every job are computed and nothing is reused) and polls every job every 50 ms
until all are done. Variants, side by side in one run:

- ``before``: the worker of commit ``--before`` (default ``dc70514``, the main
  branch before this change), extracted with ``git archive`` and run against the
  new API through the single-task routes it speaks: one lease request and one
  result request per task, and 0.1 s sleep-steps while its slot is busy;
- ``k=1``: this worker with ``--concurrency 1``: one task per request, but woken when
  its slot frees instead of sleeping;
- ``k=4`` / ``k=8``: this worker with 4 / 8 slots: it leases up to its free slots in
  one request and posts the outcomes that finish together in one request.

Reported per variant: wall time from the first submit to the last job done, jobs/s,
p50/p95 of submit -> done per job, lease requests (that granted tasks) and tasks
leased, read from the API's ``GET /metrics``, and the 1-minute load average at the
end of the variant (the machine is shared). Ratios are against ``k=1``.

    uv run python bench/pull_batch.py [--jobs 30 --workers 2 --variants before k=1 k=4 k=8]

A variant named twice runs twice (in that order), to see the machine's drift.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import percentile  # noqa: E402
from bench.queue_throughput import (  # noqa: E402
    ADMIN,
    Proc,
    _children,
    _cpu_of,
    api_cpu,
    api_proc,
    base_env,
    job_body,
    source_tree,
    start_pull_workers,
)
from tests.fixtures.servers import RedisServer  # noqa: E402


def extract_worker(commit: str, into: Path) -> dict[str, str]:
    """The worker and core library of ``commit``, as a PYTHONPATH to run them from."""
    return source_tree(commit, into, ("services/worker/src", "libs/zpe_core/src"))


def counters(url: str) -> dict[str, float]:
    """``zpe_pull_*`` counters of the API process, by ``name{route}``."""
    found: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        # Counters only: prometheus_client adds a ``_created`` timestamp per label set.
        if line.startswith("zpe_pull_") and "_total{" in line:
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def run_jobs(url: str, n: int, timeout: float = 600) -> tuple[float, list[float]]:
    """Warm-up job, then N at once: wall seconds and each job's submit -> done seconds."""
    with httpx.Client(base_url=url, timeout=60) as client:

        def submit(i: int) -> tuple[str, float]:
            body = job_body(i)
            t = time.perf_counter()
            answer = client.post("/calc/zpe/jobs", json=body)
            if answer.status_code != 201:
                raise RuntimeError(f"submit: {answer.status_code} {answer.text}")
            return answer.json()["job_id"], t

        def wait(submitted: list[tuple[str, float]]) -> list[float]:
            pending = dict(submitted)
            latencies = []
            deadline = time.monotonic() + timeout
            while pending:
                for job_id, t in list(pending.items()):
                    state = client.get(f"/calc/zpe/jobs/{job_id}").json()["state"]
                    if state == "done":
                        latencies.append(time.perf_counter() - t)
                        del pending[job_id]
                    elif state in ("failed", "cancelled"):
                        raise RuntimeError(f"job {job_id} {state}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(pending)} jobs not done in {timeout} s")
                time.sleep(0.05)
            return latencies

        wait([submit(10_000)])  # warm-up: the workers are up, enrolled and importing done
        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            submitted = list(pool.map(submit, range(n)))
        latencies = wait(submitted)
        return time.perf_counter() - t0, latencies


def run_variant(
    store_url: str, n: int, workers: int, concurrency: int, extra_env: dict[str, str], d: Path
) -> dict[str, float]:
    env = {**base_env(store_url, "http-pull"), "ZPE_ADMIN_TOKEN": ADMIN}
    api, url = api_proc(env, d)
    procs: list[Proc] = []
    try:
        procs = start_pull_workers(
            url, workers, d, extra_env=extra_env, extra_args=("--concurrency", str(concurrency))
        )
        before = counters(url)
        api_and_redis = api_cpu(api, store_url)

        def workers_cpu() -> float:
            pids = [p.proc.pid for p in procs]
            return sum(_cpu_of(pid) for pid in pids + [c for pid in pids for c in _children(pid)])

        cpu0, workers0 = api_and_redis(), workers_cpu()
        wall, latencies = run_jobs(url, n)
        cpu1, workers1 = api_and_redis(), workers_cpu()
        after = counters(url)
        delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        requests = sum(v for k, v in delta.items() if k.startswith("zpe_pull_lease_requests"))
        leased = sum(v for k, v in delta.items() if k.startswith("zpe_pull_tasks_leased"))
        return {
            "wall": wall,
            "p50": percentile(latencies, 0.5),
            "p95": percentile(latencies, 0.95),
            "requests": requests,
            "leased": leased,
            "load": os.getloadavg()[0],
            # CPU seconds of the API process, the pull workers and redis-server over
            # run_jobs, its warm-up job included (31 jobs for 30 timed).
            "cpu_api": cpu1["api"] - cpu0["api"],
            "cpu_workers": workers1 - workers0,
            "cpu_redis": cpu1["redis"] - cpu0["redis"],
        }
    finally:
        for p in procs:
            p.stop()
        api.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--before", default="dc70514", help="commit of the 'before' worker")
    parser.add_argument("--variants", nargs="+", default=["before", "k=1", "k=4", "k=8"])
    args = parser.parse_args()
    n, w = args.jobs, args.workers
    print(f"load average before: {os.getloadavg()}; nproc={os.cpu_count()}", flush=True)
    print(f"{n} jobs of samples/h2_zpe.in (mock, 13 computed tasks each), W={w} pull workers")
    results: dict[str, dict[str, float] | str] = {}
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis:
        base = f"redis://127.0.0.1:{redis.port}/0"
        for index, variant in enumerate(args.variants):
            d = Path(tmp) / f"{index}-{variant.replace('=', '')}"
            d.mkdir()
            name = variant if variant not in results else f"{variant} (again)"
            if variant == "before":
                concurrency, extra = 1, extract_worker(args.before, Path(tmp) / "before-src")
            else:
                concurrency, extra = int(variant.removeprefix("k=")), {}
            store_url = f"{base}?namespace=pull-{uuid.uuid4().hex[:8]}"
            try:
                row = run_variant(store_url, n, w, concurrency, extra, d)
                results[name] = row
                print(
                    f"{name}: {row['wall']:.2f} s, {n / row['wall']:.2f} jobs/s, "
                    f"p50 {row['p50']:.2f} s, {row['leased'] / max(row['requests'], 1):.2f} "
                    f"tasks/lease request (load {row['load']:.2f}); CPU s: API "
                    f"{row['cpu_api']:.2f}, workers {row['cpu_workers']:.2f}, "
                    f"redis {row['cpu_redis']:.2f}",
                    flush=True,
                )
            except Exception as exc:  # report and go on with the other variants
                results[name] = f"not run: {exc}"[:300]
                print(f"{name}: {results[name]}", flush=True)
    print(f"load average after: {os.getloadavg()}")
    ref = results.get("k=1")
    print()
    print(
        "| variant | wall s | jobs/s | p50 s | p95 s | lease requests | tasks leased "
        "| tasks/request | vs k=1 | load (1 min) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, figures in results.items():
        if isinstance(figures, str):
            print(f"| {name} | {figures} | | | | | | | | |")
            continue
        f = figures
        ratio = f"{ref['wall'] / f['wall']:.2f}x" if isinstance(ref, dict) else "-"
        print(
            f"| {name} | {f['wall']:.2f} | {n / f['wall']:.2f} | {f['p50']:.2f} "
            f"| {f['p95']:.2f} | {f['requests']:.0f} | {f['leased']:.0f} "
            f"| {f['leased'] / max(f['requests'], 1):.2f} | {ratio} | {f['load']:.2f} |"
        )


if __name__ == "__main__":
    main()
