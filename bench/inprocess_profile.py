"""Where one in-process worker spends its time per mock task, on a real redis-server.

    uv run python bench/inprocess_profile.py [--jobs 20] [--profile 25]

Starts ``redis-server`` (``RedisServer``), submits ``--jobs`` H2 mock jobs (13 tasks
each, nothing shared: ``queue_throughput.job_body``) through ``JobService(store, None,
settings)`` and runs every task with ``run_task`` in this one thread, as a process of
the in-process pool does (no dispatch, no pool hand-off: ``bench/queue_throughput.py``
measures those).
Every store primitive call (a ``_create_many`` batch: one) is counted by operation and
key kind (``tasks``, ``jobs``, ``done``, ...), apart for submission and for running the
tasks (finalizing included).
Prints round trips and writes per task and per job, the CPU and wall time per task, and
with ``--profile N`` the N functions of most cumulative time while running tasks.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.queue_throughput import job_body  # noqa: E402
from tests.fixtures.servers import RedisServer  # noqa: E402
from zpe_client.models import JobRequest  # noqa: E402
from zpe_core.jobs.runner import run_task  # noqa: E402
from zpe_core.jobs.service import JobService  # noqa: E402
from zpe_core.settings import Settings  # noqa: E402
from zpe_core.store import JobStore, open_store  # noqa: E402

WRITES = ("_create", "_create_many", "_swap", "_swap_and_mark", "_delete", "_put_blob")
PRIMITIVES = (*WRITES, "_read", "_list", "_get_blob")


def count_calls(store: JobStore) -> Counter[tuple[str, str]]:
    """Wrap the primitives of ``store`` (on the instance) to count ``(operation, kind)``."""
    calls: Counter[tuple[str, str]] = Counter()

    def wrap(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(key: Any, *args: Any, **kwargs: Any) -> Any:
            first = key[0][0] if name == "_create_many" and key else str(key)  # one batch
            calls[(name.lstrip("_"), first.split("/", 1)[0])] += 1
            return method(key, *args, **kwargs)

        return counted

    for name in PRIMITIVES:
        if hasattr(store, name):  # a primitive of another version of the store
            setattr(store, name, wrap(name, getattr(store, name)))
    return calls


def report(title: str, calls: Counter[tuple[str, str]], per: int, unit: str) -> None:
    total = sum(calls.values())
    writes = sum(n for (op, _), n in calls.items() if f"_{op}" in WRITES)
    print(f"{title}: {total / per:.2f} round trips per {unit}, {writes / per:.2f} writes")
    for (op, kind), n in sorted(calls.items(), key=lambda item: -item[1]):
        print(f"    {op:9} {kind:14} {n / per:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--profile", type=int, default=0, help="print the top N functions")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}; nproc={os.cpu_count()}")
    with RedisServer() as redis:
        store = open_store(f"{redis.url}?namespace=p{uuid.uuid4().hex[:8]}")
        calls = count_calls(store)
        settings = Settings(default_engine="mock", mock_delay_seconds=0.0)
        service = JobService(store, None, settings)
        owner = f"profile-{uuid.uuid4().hex[:8]}"

        def submit(i: int) -> list[str]:
            request = JobRequest.model_validate({**job_body(i), "engine": "mock"})
            job, _ = service.submit(request, owner=owner)
            return list(dict.fromkeys(ref.task_id for ref in job.tasks))

        submit(10_000)  # warm-up: imports, first plan
        for task_id in submit(10_001):
            run_task(service, task_id, "warm")
        calls.clear()
        t0 = time.perf_counter()
        task_ids = [task_id for i in range(args.jobs) for task_id in submit(i)]
        submit_s = time.perf_counter() - t0
        report("submit", calls, args.jobs, "job")
        print(f"    {submit_s / args.jobs * 1000:.2f} ms wall per job submitted")
        calls.clear()
        profiler = cProfile.Profile() if args.profile else None
        cpu0, t0 = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        for task_id in task_ids:
            outcome = run_task(service, task_id, "w0")
            assert outcome.value == "committed", outcome
        if profiler is not None:
            profiler.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        n = len(task_ids)
        report("run (tasks + finalize)", calls, n, "task")
        print(
            f"    {wall / n * 1000:.2f} ms wall, {cpu / n * 1000:.2f} ms CPU per task "
            f"({n} tasks; load {os.getloadavg()[0]:.2f})"
        )
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
        store.close()
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
