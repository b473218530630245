"""Submit-to-done latency of ``mock`` jobs through a real API process.

Starts ``zpe serve`` (file store, in-process dispatch: the embedded defaults) on
a free loopback port, submits jobs one after another and polls each until it
is done. Every job gets a distinct ``delta`` so no task is reused (a second
series resubmits the first input to show the reuse path).

    uv run python bench/api_mock_latency.py [--jobs 40] [--sample samples/h2o_zpe.in]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import percentile  # noqa: E402
from tests.fixtures.servers import free_port  # noqa: E402


def run_job(client: httpx.Client, text: str, delta: float) -> float:
    start = time.perf_counter()
    job_id = client.post("/calc/zpe/jobs", json={"input_text": text, "delta": delta}).json()[
        "job_id"
    ]
    while True:
        state = client.get(f"/calc/zpe/jobs/{job_id}").json()["state"]
        if state == "done":
            return time.perf_counter() - start
        if state in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} {state}")
        time.sleep(0.002)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--sample", default=str(ROOT / "samples" / "h2o_zpe.in"))
    args = parser.parse_args()
    text = Path(args.sample).read_text()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "ZPE_STORE_URL": f"file://{tmp}/store",
            "ZPE_DEFAULT_ENGINE": "mock",
            "ZPE_LOG_LEVEL": "WARNING",
            "ZPE_POLL_RATE_PER_SECOND": "0",  # this client polls every 2 ms on purpose
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "zpe_api.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                for _ in range(100):
                    try:
                        if client.get("/readyz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                run_job(client, text, 0.0101)  # warm the worker processes
                fresh = [run_job(client, text, 0.01 + i * 1e-5) for i in range(args.jobs)]
                reused = [run_job(client, text, 0.01 + i * 1e-5) for i in range(args.jobs)]
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"sample: {Path(args.sample).name}, {args.jobs} jobs each, file store, inprocess")
    print(f"{'series':<28}{'median ms':>12}{'p95 ms':>12}{'max ms':>12}")
    for name, values in (
        ("fresh (all tasks computed)", fresh),
        ("resubmitted (all reused)", reused),
    ):
        ms = [v * 1000 for v in values]
        print(
            f"{name:<28}{statistics.median(ms):>12.1f}{percentile(ms, 0.95):>12.1f}{max(ms):>12.1f}"
        )


if __name__ == "__main__":
    main()
