"""The status poll's CPU cost in-process: the API's ASGI app called directly, no sockets.

Complements ``bench/polling_load.py`` on a shared machine: CPU time per request
(``time.process_time``) does not depend on how much of the machine the process got,
and no load generator competes with it. Builds the ``small``, ``big`` and ``running``
jobs of ``polling_load.prepare_jobs`` in a ``file://`` (or the given) store, opens the
app (``ZPE_EXECUTION_MODE=http-pull``, no worker; lifespan run) and calls ``/healthz``
and each job's status (200 and, with its ETag, 304) ``--requests`` times each on one
event loop; prints microseconds of CPU per request and the ratio to ``/healthz``.
``--before COMMIT`` re-runs itself on the API, core and client sources of ``COMMIT``
(``git archive``) first, for a before/after pair on the same machine back to back.

    uv run python bench/polling_asgi.py [--requests 3000] [--before main] [--store-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def call(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """One GET through the ASGI app; its status and ETag."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    answer: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["etag"] = dict(message["headers"]).get(b"etag", b"")

    await app(scope, receive, send)
    return answer["status"], answer["etag"]


async def measure(app: Any, jobs: dict[str, str], n: int) -> list[str]:
    async with app.router.lifespan_context(app):
        targets: list[tuple[str, str, list[tuple[bytes, bytes]]]] = [("healthz", "/healthz", [])]
        for name, job_id in jobs.items():
            path = f"/calc/zpe/jobs/{job_id}"
            _, etag = await call(app, path, [])
            targets += [
                (f"{name} 200", path, []),
                (f"{name} 304", path, [(b"if-none-match", etag)]),
            ]
        rows: list[str] = []
        floor = 0.0
        for name, path, headers in targets:
            for _ in range(200):  # warm up
                await call(app, path, headers)
            t0 = time.process_time()
            for _ in range(n):
                status, _ = await call(app, path, headers)
            us = (time.process_time() - t0) / n * 1e6
            floor = floor or us
            rows.append(f"| {name} | {status} | {us:.0f} | {floor / us:.2f} |")
        return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000, help="per target")
    parser.add_argument("--store-url", default=None, help="default: a fresh file:// store")
    parser.add_argument("--before", default=None, help="first run on the sources of this commit")
    parser.add_argument("--label", default="after")
    args = parser.parse_args()
    if args.before:
        with tempfile.TemporaryDirectory() as tmp:
            dirs = ["services/api/src", "libs/zpe_core/src", "libs/zpe_client/src"]
            archive = subprocess.run(
                ["git", "archive", args.before, *dirs], cwd=ROOT, capture_output=True, check=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(f"{tmp}/{d}" for d in dirs)}
            argv = [sys.executable, __file__, "--requests", str(args.requests), "--label", "before"]
            if args.store_url:
                argv += ["--store-url", args.store_url]
            subprocess.run(argv, env=env, check=True)
    os.environ.update(
        ZPE_DEFAULT_ENGINE="mock",
        ZPE_LOG_LEVEL="WARNING",
        ZPE_POLL_RATE_PER_SECOND="0",
        ZPE_EXECUTION_MODE="http-pull",
    )
    with tempfile.TemporaryDirectory() as tmp:
        url = args.store_url or f"file://{tmp}/store"
        os.environ["ZPE_STORE_URL"] = url
        from bench.polling_load import prepare_jobs
        from zpe_api.main import create_app
        from zpe_core.observability.logs import configure_logging

        jobs = prepare_jobs(url)
        configure_logging("WARNING")
        print(f"[{args.label}] load average {os.getloadavg()}", flush=True)
        rows = asyncio.run(measure(create_app(), jobs, args.requests))
    print(f"\n[{args.label}] {url.split(':')[0]} store, {args.requests} requests per target")
    print("| request | status | CPU us/req | vs /healthz |\n|---|---|---:|---:|")
    print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
