"""How long a 385-task submission takes to create its tasks, creates one at a time against
several in flight, every backend side by side.

Usage: ``uv run python bench/submission_latency.py [--molecules 32] [--repeat 2]
[--latency-ms 20] [--concurrency 8]``

Starts redis-server and fake-gcs-server itself (``tests/fixtures/servers.py``) and submits
mock jobs of ``2 * molecules`` mobile atoms (32: 64 atoms, 385 tasks, each a new task:
another ``delta`` per submission) through ``JobService(store, None, settings)``, timing
``submit`` (plan, job record, every task record and its ready marker). For each backend
the same store is measured with ``create_concurrency`` 1 and ``--concurrency``,
alternating, ``--repeat`` times each; the ratio is of the medians. ``gcs+latency`` is
fake-gcs-server behind the tests' proxy (``tests/fixtures/gcs_rate_limit.py``) adding
``--latency-ms`` to every request, as a round trip to Cloud Storage from Cloud Run would
(its write rate limit is off: every object here is written once).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from tests.fixtures.gcs_rate_limit import RateLimitedGcs  # noqa: E402
from tests.fixtures.servers import GcsServer, RedisServer  # noqa: E402
from tests.fixtures.store_writes import cluster_input  # noqa: E402
from zpe_client.models import JobRequest  # noqa: E402
from zpe_core.jobs.service import JobService  # noqa: E402
from zpe_core.settings import Settings  # noqa: E402
from zpe_core.store import JobStore, open_store  # noqa: E402


def time_submission(store: JobStore, molecules: int, delta: float) -> tuple[float, int]:
    """Seconds of one submission of a job whose tasks are all new, and its task count."""
    service = JobService(store, None, Settings(default_engine="mock", mock_delay_seconds=0.0))
    request = JobRequest(
        input_text=cluster_input(molecules), engine="mock", symmetry="off", delta=delta
    )
    started = time.perf_counter()
    job, created = service.submit(request, owner=f"bench-{uuid.uuid4().hex[:8]}")
    seconds = time.perf_counter() - started
    assert created and job.total_tasks == 6 * 2 * molecules + 1
    return seconds, job.total_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, default=32, help="H2 molecules (2 atoms each)")
    parser.add_argument("--repeat", type=int, default=2, help="submissions per variant")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="gcs+latency round trip")
    parser.add_argument("--concurrency", type=int, default=8, help="creates in flight")
    parser.add_argument("--backends", default="file,redis,gcs,gcs+latency")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    many_label = f"{args.concurrency} in flight"
    print(f"{'backend':12} {'tasks':>5} {'1 at a time':>12} {many_label:>12} ratio")
    delta = 0.01
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis, GcsServer() as gcs:
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.emulator_host
        unique = uuid.uuid4().hex[:8]
        proxy = RateLimitedGcs(
            gcs.emulator_host, min_interval=0.0, latency=args.latency_ms / 1000
        ).start()
        try:
            for name in args.backends.split(","):
                if name == "gcs+latency":
                    store: JobStore = proxy.store(gcs.bucket, f"l{unique}")
                else:
                    store = open_store(
                        {
                            "file": f"file://{tmp}/store",
                            "redis": f"{redis.url}?namespace=s{unique}",
                            "gcs": f"gs://{gcs.bucket}/s{unique}",
                        }[name]
                    )
                # Redis sends a batch in one pipeline whatever the setting: shown for scale.
                times: dict[int, list[float]] = {1: [], args.concurrency: []}
                tasks = 0
                try:
                    for _ in range(args.repeat):
                        for concurrency in times:
                            store.create_concurrency = concurrency
                            delta += 0.0001
                            seconds, tasks = time_submission(store, args.molecules, delta)
                            times[concurrency].append(seconds)
                finally:
                    store.close()
                one, many = (statistics.median(times[c]) for c in times)
                print(f"{name:12} {tasks:5d} {one:11.2f}s {many:11.2f}s {one / many:5.1f}x")
        finally:
            proxy.stop()
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
