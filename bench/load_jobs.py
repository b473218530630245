"""Load: many concurrent ``mock`` jobs through one real API process.

Starts ``zpe serve`` (file store, in-process dispatch with the default worker
count: the embedded defaults) on a free loopback port. ``--submitters`` threads
share ``--jobs`` jobs; each submits a job (a distinct ``delta``, so nothing is
reused), polls ``GET /calc/zpe/jobs/{id}`` every ``--poll-interval`` s until it
is done, then takes the next. Reports jobs/s, submit latency p50/p95, poll
latency p50/p95/p99, and the peak RSS of the API process (``VmHWM``) and of its
worker processes. Then resubmits finished inputs one at a time: every task
reused, no SCF, submit -> done.

    uv run python bench/load_jobs.py [--jobs 200 --submitters 20 --sample samples/h2o_zpe.in]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import percentile, status_kib  # noqa: E402
from tests.fixtures.servers import free_port  # noqa: E402


def children(pid: int) -> list[int]:
    try:
        out = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return []
    return [int(x) for x in out.split()]


class Sampler(threading.Thread):
    """Peak RSS of the workers (children) of the API process, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_children_kib = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            total = sum(status_kib(child, "VmRSS") for child in children(self.pid))
            self.peak_children_kib = max(self.peak_children_kib, total)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--submitters", type=int, default=20)
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument("--resubmits", type=int, default=20)
    parser.add_argument("--sample", default=str(ROOT / "samples" / "h2o_zpe.in"))
    parser.add_argument(
        "--poll-limit",
        type=float,
        default=0.0,
        help="ZPE_POLL_RATE_PER_SECOND for the server; 0 (default here) measures raw capacity "
        "(all submitters share one loopback address, i.e. one anonymous user).",
    )
    args = parser.parse_args()
    text = Path(args.sample).read_text()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    submit_ms: list[float] = []
    poll_ms: list[float] = []
    job_ms: list[float] = []
    errors: list[str] = []
    finished: list[tuple[str, float]] = []
    lock = threading.Lock()
    counter = iter(range(args.jobs))

    def submitter() -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                delta = 0.01 + (i + 1) * 1e-6
                t0 = time.perf_counter()
                created = client.post("/calc/zpe/jobs", json={"input_text": text, "delta": delta})
                t1 = time.perf_counter()
                if created.status_code != 201:
                    with lock:
                        errors.append(f"submit {created.status_code}")
                    continue
                job_id = created.json()["job_id"]
                while True:
                    time.sleep(args.poll_interval)
                    p0 = time.perf_counter()
                    status = client.get(f"/calc/zpe/jobs/{job_id}")
                    p1 = time.perf_counter()
                    with lock:
                        poll_ms.append((p1 - p0) * 1000)
                    if status.status_code == 429:  # throttled: wait as told
                        with lock:
                            errors.append("poll 429")
                        time.sleep(float(status.headers.get("Retry-After", "1")))
                        continue
                    state = status.json().get("state") if status.status_code == 200 else None
                    if status.status_code != 200:
                        with lock:
                            errors.append(f"poll {status.status_code}")
                    if state in ("done", "failed", "cancelled"):
                        break
                with lock:
                    submit_ms.append((t1 - t0) * 1000)
                    job_ms.append((time.perf_counter() - t0) * 1000)
                    if state == "done":
                        finished.append((job_id, delta))
                    else:
                        errors.append(f"job {state}")

    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "ZPE_STORE_URL": f"file://{tmp}/store",
            "ZPE_DEFAULT_ENGINE": "mock",
            "ZPE_LOG_LEVEL": "WARNING",
            "ZPE_POLL_RATE_PER_SECOND": str(args.poll_limit),
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "zpe_api.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sampler = Sampler(server.pid)
        try:
            with httpx.Client(base_url=base, timeout=30) as client:
                for _ in range(300):
                    try:
                        if client.get("/readyz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.1)
                # One job first to spawn and warm the worker processes.
                warm = client.post("/calc/zpe/jobs", json={"input_text": text, "delta": 0.02})
                warm_id = warm.json()["job_id"]
                while client.get(f"/calc/zpe/jobs/{warm_id}").json()["state"] != "done":
                    time.sleep(0.05)
            idle_rss = status_kib(server.pid, "VmRSS")
            sampler.start()
            load_before = os.getloadavg()
            start = time.perf_counter()
            threads = [threading.Thread(target=submitter) for _ in range(args.submitters)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
            load_after = os.getloadavg()

            # Resubmit finished inputs one at a time: all tasks reused, no engine run.
            resub_ms: list[float] = []
            reused_ok = 0
            with httpx.Client(base_url=base, timeout=30) as client:
                for _, delta in finished[: args.resubmits]:
                    t0 = time.perf_counter()
                    job_id = client.post(
                        "/calc/zpe/jobs", json={"input_text": text, "delta": delta}
                    ).json()["job_id"]
                    while True:
                        status = client.get(f"/calc/zpe/jobs/{job_id}").json()
                        if status["state"] in ("done", "failed", "cancelled"):
                            break
                        time.sleep(0.001)
                    resub_ms.append((time.perf_counter() - t0) * 1000)
                    progress = status["progress"]
                    reused_ok += progress["reused"] == progress["total"]
            peak_api = status_kib(server.pid, "VmHWM")
            workers = len(children(server.pid))
        finally:
            sampler.stop.set()
            server.terminate()
            server.wait(timeout=30)

    ntasks = 19 if "h2o" in Path(args.sample).name else None
    print(
        f"sample {Path(args.sample).name} (mock engine), {args.jobs} jobs, {args.submitters} "
        f"concurrent submitters, poll every {args.poll_interval * 1000:.0f} ms, file store, "
        f"inprocess ({workers} worker processes); nproc={os.cpu_count()}; "
        f"poll limit {args.poll_limit or 'off'}"
    )
    print(
        f"load average before {load_before[0]:.2f} {load_before[1]:.2f}, "
        f"after {load_after[0]:.2f} {load_after[1]:.2f}"
    )
    print(f"jobs done: {len(job_ms)}, errors: {len(errors)} {sorted(set(errors))[:5]}")
    rate = len(job_ms) / elapsed
    tasks = f" ({rate * ntasks:.0f} tasks/s)" if ntasks else ""
    print(f"throughput: {rate:.1f} jobs/s{tasks} over {elapsed:.1f} s")
    print(
        f"submit latency ms: p50 {statistics.median(submit_ms):.1f}  "
        f"p95 {percentile(submit_ms, 0.95):.1f}  max {max(submit_ms):.1f}"
    )
    print(
        f"poll latency ms ({len(poll_ms)} polls): p50 {statistics.median(poll_ms):.1f}  "
        f"p95 {percentile(poll_ms, 0.95):.1f}  p99 {percentile(poll_ms, 0.99):.1f}"
    )
    print(
        f"job submit->done ms: p50 {statistics.median(job_ms):.0f}  "
        f"p95 {percentile(job_ms, 0.95):.0f}"
    )
    print(
        f"API process RSS: idle {idle_rss / 1024:.0f} MiB, peak (VmHWM) {peak_api / 1024:.0f} MiB;"
        f" worker processes peak total {sampler.peak_children_kib / 1024:.0f} MiB"
    )
    if resub_ms:
        print(
            f"resubmit of a finished input ({reused_ok}/{len(resub_ms)} fully reused, 0 engine "
            f"runs) submit->done ms: p50 {statistics.median(resub_ms):.1f}  "
            f"max {max(resub_ms):.1f} (target < 200)"
        )


if __name__ == "__main__":
    main()
