"""Writes per store key of one 385-task mock job, every backend side by side.

Usage: ``uv run python bench/job_record_writes.py [--threads 8] [--molecules 32]
[--backends memory,file,redis,gcs] [--rate-limited-threads 32]``

Starts redis-server and fake-gcs-server itself (``tests/fixtures/servers.py``), submits
a mock job of ``2 * molecules`` mobile atoms (32: 64 atoms, 385 tasks) through
``JobService(store, None, settings)`` on each backend wrapped in the tests' write
counter (``tests/fixtures/store_writes.py``) and runs its tasks with ``run_task`` from
``--threads`` threads. Prints, per backend, the writes to the job's record (and the
attempts, refused compare-and-swaps included), the most writes to any task record and
to any key at all, and the wall time. With ``--rate-limited-threads`` it then runs the
job on GCS through the proxy that answers 429 to a second write of one object within
1 s (``tests/fixtures/gcs_rate_limit.py``) and prints its time, 429s and errors, and
the writes and 429s per kind of key (``artifacts`` writes / 6: how many finished the job).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from tests.fixtures.gcs_rate_limit import RateLimitedGcs  # noqa: E402
from tests.fixtures.servers import GcsServer, RedisServer  # noqa: E402
from tests.fixtures.store_writes import WriteCountingStore, run_job_in_threads  # noqa: E402
from zpe_core.store import open_store  # noqa: E402
from zpe_core.store.gcs import GcsJobStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8, help="worker threads per backend")
    parser.add_argument("--molecules", type=int, default=32, help="H2 molecules (2 atoms each)")
    parser.add_argument("--backends", default="memory,file,redis,gcs")
    parser.add_argument(
        "--rate-limited-threads", type=int, default=0, help="also run behind the 429 proxy"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis, GcsServer() as gcs:
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.emulator_host
        unique = uuid.uuid4().hex[:10]
        urls = {
            "memory": "memory://",
            "file": f"file://{tmp}/store",
            "redis": f"{redis.url}?namespace=b{unique}",
            "gcs": f"gs://{gcs.bucket}/b{unique}",
        }
        print(
            f"{'backend':8} {'tasks':>5} {'job record':>10} {'attempts':>8} "
            f"{'max task rec':>12} {'max any key':>11} {'seconds':>8}  state"
        )
        for name in args.backends.split(","):
            store = WriteCountingStore(open_store(urls[name]))
            try:
                run = run_job_in_threads(store, threads=args.threads, molecules=args.molecules)
            finally:
                store.close()
            job_key = f"jobs/{run.job.job_id}"
            print(
                f"{name:8} {run.job.total_tasks:5d} {store.writes[job_key]:10d} "
                f"{store.attempts[job_key]:8d} {store.busiest('tasks/')[1]:12d} "
                f"{store.busiest()[1]:11d} {run.seconds:8.1f}  {run.job.state.value}"
                + (f" ({len(run.errors)} errors)" if run.errors else "")
            )
        if args.rate_limited_threads:
            proxy = RateLimitedGcs(gcs.emulator_host).start()
            try:
                store_429 = proxy.store(gcs.bucket, f"r{unique}")
                run = run_job_in_threads(
                    store_429, threads=args.rate_limited_threads, molecules=args.molecules
                )
                store_429.close()
            finally:
                proxy.stop()
            job_name = f"{store_429._records}jobs/{run.job.job_id}"
            print(
                f"gcs behind 1 write/s/object, {args.rate_limited_threads} threads: "
                f"{run.seconds:.1f} s, {run.job.state.value}, "
                f"{sum(run.outcomes.values())} tasks run, {len(run.errors)} errors, "
                f"{sum(proxy.refused.values())} writes answered 429, "
                f"job record written {proxy.forwarded_writes[job_name]} times"
            )
            print_writes_by_kind(proxy, store_429)


def print_writes_by_kind(proxy: RateLimitedGcs, store: GcsJobStore) -> None:
    """Writes let through and 429s per kind of key (``tasks``, ``leases``, ``finalizing``,
    ``artifacts``, ...): which objects the limit hit, and how hard."""
    writes: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    most: Counter[str] = Counter()
    for counter, tally in ((proxy.forwarded_writes, writes), (proxy.refused, refused)):
        for name, n in counter.items():
            key = name.removeprefix(store._records).removeprefix(store._blobs)
            tally[key.split("/", 1)[0]] += n
            if counter is proxy.refused:
                most[key.split("/", 1)[0]] = max(most[key.split("/", 1)[0]], n)
    for kind in sorted(writes | refused):
        print(
            f"  {kind:12} writes {writes[kind]:5d}, 429s {refused[kind]:4d} "
            f"(at most {most[kind]} on one object)"
        )


if __name__ == "__main__":
    main()
