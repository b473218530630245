"""Polling load: ``GET /calc/zpe/jobs/{id}`` on ONE API process.

Starts ``zpe serve`` (in-process dispatch, mock engine) on a ``file://`` store
and on a ``redis://`` store (a ``redis-server`` started with ``RedisServer``
from ``tests/fixtures/servers.py``), submits one H2 job and waits until it is
done, then hammers its status URL from a load generator on loopback:

- ``plain``: ``GET`` without conditions (200 + the JSON status);
- ``inm``: ``GET`` with ``If-None-Match: <the job's ETag>`` (304, no body).

For each, an **open-loop** phase at a fixed offered rate (default 1,000 req/s;
requests are sent on a schedule, latency counts from the scheduled instant, so a
stalled server is not hidden by a waiting client) and a **closed-loop** phase at
max throughput (``--conns`` keep-alive connections per generator process, each
sends its next request when the answer arrives). The load generator is
``--procs`` processes of a minimal asyncio HTTP/1.1 keep-alive client (no
library: cheaper than httpx, so more of the 2 cores goes to the server).
``ZPE_POLL_RATE_PER_SECOND=0``: the per-user poll rate limiter is **off**,
otherwise every request from loopback (one anonymous user) above 2/s would get
429. Reports achieved req/s, p50/p99 latency, the API process's CPU time per
request (user + system, from ``/proc/PID/stat``: the figure that does not depend on
how much of the shared machine the server got), answers other than the expected
200/304, and the API process's peak RSS (``VmHWM`` from ``/proc/PID/status``).

    uv run python bench/polling_load.py [--stores file redis] [--seconds 10] [--rate 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import percentile, status_kib  # noqa: E402
from tests.fixtures.servers import RedisServer, free_port, wait_until_up  # noqa: E402


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
    kind: str, port: int, path: str, etag: str | None, rate: float, seconds: float, conns: int
) -> tuple[list[float], dict[int, int], float]:
    """One generator process: open loop at ``rate`` or closed loop over ``conns``."""
    extra = f"If-None-Match: {etag}\r\n" if etag else ""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()
    if kind == "open":
        lat, codes, wall = asyncio.run(_open_loop(port, request, rate, seconds, conns))
    else:
        lat, codes, wall = asyncio.run(_closed_loop(port, request, seconds, conns))
    return lat, dict(codes), wall


# ----------------------------------------------------------------- the runs


def start_api(store_url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "ZPE_STORE_URL": store_url,
        "ZPE_DEFAULT_ENGINE": "mock",
        "ZPE_LOG_LEVEL": "WARNING",
        "ZPE_POLL_RATE_PER_SECOND": "0",  # limiter off: we measure raw capacity
    }
    log = open(workdir / "api.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "zpe_api.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_until_up(f"http://127.0.0.1:{port}/readyz", proc, log=workdir / "api.log", timeout=60)
    return proc, port


def run_store(label: str, store_url: str, workdir: Path, args: argparse.Namespace) -> list[str]:
    proc, port = start_api(store_url, workdir)
    rows: list[str] = []
    try:
        base = f"http://127.0.0.1:{port}"
        text = (ROOT / "samples" / "h2_zpe.in").read_text()
        with httpx.Client(base_url=base, timeout=30) as client:
            job_id = client.post("/calc/zpe/jobs", json={"input_text": text}).json()["job_id"]
            while True:
                answer = client.get(f"/calc/zpe/jobs/{job_id}")
                if answer.json()["state"] in ("done", "failed", "cancelled"):
                    break
                time.sleep(0.05)
            etag = answer.headers["ETag"]
            body_bytes = len(answer.content)
            path = f"/calc/zpe/jobs/{job_id}"
            for _ in range(200):  # warm up the route
                client.get(path)
        hwm_idle = status_kib(proc.pid, "VmHWM")
        print(
            f"[{label}] job {job_id} done; status body {body_bytes} B, ETag {etag}; "
            f"API VmHWM after the job + warm-up {hwm_idle / 1024:.1f} MiB",
            flush=True,
        )
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(args.procs, mp_context=ctx) as pool:
            for variant, tag in (("plain", None), ("inm", etag)):
                expected = 200 if tag is None else 304
                for kind in ("open", "closed"):
                    cpu0 = cpu_seconds(proc.pid)
                    futures = [
                        pool.submit(
                            generate,
                            kind,
                            port,
                            path,
                            tag,
                            args.rate / args.procs,
                            args.seconds,
                            args.conns,
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
                    rps = len(lat) / wall
                    cpu_ms = (cpu_seconds(proc.pid) - cpu0) * 1000 / max(1, len(lat))
                    bad = sum(n for code, n in codes.items() if code != expected)
                    offered = f"{args.rate:,.0f}/s open" if kind == "open" else "max (closed)"
                    row = (
                        f"| {label} | {variant} ({expected}) | {offered} | {rps:,.0f} | "
                        f"{percentile(lat, 0.5) * 1000:.1f} | {percentile(lat, 0.99) * 1000:.1f} | "
                        f"{cpu_ms:.2f} | {bad} |"
                    )
                    rows.append(row)
                    print(row, flush=True)
        hwm = status_kib(proc.pid, "VmHWM")
        rows.append(f"| {label} | API VmHWM (peak RSS) | | | | | | {hwm / 1024:.1f} MiB |")
        print(f"[{label}] API process peak RSS (VmHWM): {hwm / 1024:.1f} MiB", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stores", nargs="+", default=["file", "redis"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop offered req/s")
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--conns", type=int, default=16, help="connections per generator")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}; nproc={os.cpu_count()}", flush=True)
    print(
        f"generator: {args.procs} processes x {args.conns} keep-alive connections on loopback, "
        "competing with the API for the same cores; ZPE_POLL_RATE_PER_SECOND=0 (limiter off)",
        flush=True,
    )
    header = (
        "| store | request | offered | achieved req/s | p50 ms | p99 ms "
        "| API CPU ms/req | other answers |"
    )
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for store in args.stores:
            workdir = Path(tmp) / store
            workdir.mkdir()
            if store == "file":
                rows += run_store("file", f"file://{workdir / 'store'}", workdir, args)
            elif store == "redis":
                with RedisServer() as redis:
                    rows += run_store("redis", redis.url, workdir, args)
            else:
                raise SystemExit(f"unknown store {store}")
    print(f"load average after: {os.getloadavg()}")
    print()
    print(header)
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
