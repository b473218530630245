"""Store operations per second, every backend side by side.

Usage: ``uv run python bench/store_bench.py [--n 500]``

Starts redis-server and fake-gcs-server itself (the same helpers as the test
fixtures, ``tests/fixtures/servers.py``) and measures, single-threaded, for
each backend: ``create`` (create-only write of a ~1 KB job record), ``get``
(read with revision), ``cas`` (compare-and-swap at the revision just written)
and ``mutate`` (the typed read-modify-write ``mutate_job``: read, validate,
swap).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.servers import GcsServer, RedisServer  # noqa: E402
from zpe_client.models import JobRequest  # noqa: E402
from zpe_core.jobs.models import Job, StructureInfo  # noqa: E402
from zpe_core.store import JobStore, open_store  # noqa: E402


def _job() -> Job:
    return Job(
        job_id=uuid.uuid4().hex,
        owner="bench",
        request=JobRequest(input_text="&control\n calculation='scf'\n/\n" * 10),
        engine="mock",
        structure=StructureInfo(
            natoms=3,
            symbols=["O", "H", "H"],
            mobile_indices=[0, 1, 2],
            fixed_indices=[],
            kpts=None,
            koffset=[0, 0, 0],
            ecutwfc=40.0,
            ecutrho=320.0,
            pseudo_dir=None,
            free_molecule=True,
        ),
        tasks=[],
        fingerprint="f" * 64,
    )


def _rate(n: int, op: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(n):
        op(i)
    return n / (time.perf_counter() - start)


def measure(store: JobStore, n: int) -> dict[str, float]:
    """Operations per second for create, get, cas and mutate on one store."""
    value = _job().model_dump_json().encode()
    run = uuid.uuid4().hex[:8]
    keys = [f"bench/{run}-{i:06d}" for i in range(n)]
    revs: list[int] = [0] * n

    def create(i: int) -> None:
        revs[i] = store._create(keys[i], value)

    def get(i: int) -> None:
        store._read(keys[i])

    def cas(i: int) -> None:
        revs[i] = store._swap(keys[i], value, revs[i])

    job = _job()
    store.create_job(job)

    def mutate(i: int) -> None:
        store.mutate_job(job.job_id, lambda j: j.model_copy(update={"engine": f"e{i}"}))

    return {
        "create": _rate(n, create),
        "get": _rate(n, get),
        "cas": _rate(n, cas),
        "mutate": _rate(n, mutate),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="operations per measurement")
    args = parser.parse_args()
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis, GcsServer() as gcs:
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.emulator_host
        urls = {
            "memory": "memory://",
            "file": f"file://{tmp}/store",
            "redis": f"{redis.url}?namespace=bench",
            "gcs": f"{gcs.url}-bench",
        }
        for name, url in urls.items():
            store = open_store(url)
            try:
                store.ping()
                rows.append((name, measure(store, args.n)))
            finally:
                store.close()
    print(
        f"# nproc={os.cpu_count()} python={platform.python_version()} "
        f"n={args.n} ops per cell, single thread\n"
    )
    print("| backend | create/s | get/s | cas/s | mutate_job/s |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        print(
            f"| {name} | {r['create']:,.0f} | {r['get']:,.0f} | {r['cas']:,.0f} "
            f"| {r['mutate']:,.0f} |"
        )


if __name__ == "__main__":
    main()
