"""``zpe-worker pull`` loads no control-plane module (issue 16).

The pull worker "never sees the store": it runs the real entry point in a fresh
interpreter against a small local HTTP server standing in for the worker API,
leases one mock task, computes it and posts the result; then its ``sys.modules``
must hold nothing of the control plane, the store, the job service or the
frameworks only servers need.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from zpe_client.models import TaskSpec
from zpe_core.engines.base import MOCK_VERSION

SPEC = TaskSpec(
    engine="mock",
    engine_version=MOCK_VERSION,
    symbols=["H", "H"],
    positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]],
    cell=[[8.0, 0, 0], [0, 8.0, 0], [0, 0, 8.0]],
    pbc=[False, False, False],
)

#: Modules (and their submodules) a pull worker must not load.
FORBIDDEN = (
    "zpe_core.control",
    "zpe_core.store",
    "zpe_core.dispatch",
    "zpe_core.bootstrap",
    "zpe_core.jobs.service",
    "zpe_core.jobs.submission",
    "zpe_core.jobs.dispatching",
    "zpe_core.jobs.queries",
    "zpe_core.jobs.cancellation",
    "zpe_core.jobs.outcomes",
    "zpe_core.jobs.finalize",
    "zpe_core.jobs.repair",
    "zpe_core.jobs.runner",
    "zpe_core.jobs.maintenance",
    "zpe_core.observability.metrics",
    "zpe_api",
    "fastapi",
    "starlette",
    "uvicorn",
    "prometheus_client",
    "redis",
    "google.cloud",
)

SCRIPT = """
import json, sys
from zpe_worker.cli import main
code = main(sys.argv[1:])
print("MODULES " + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


class WorkerApi(BaseHTTPRequestHandler):
    """The worker API as far as one leased task goes: leases, heartbeats, outcomes."""

    requests: list[str]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.requests.append(self.path)
        if self.path.endswith("/tasks/leases"):
            if sum(p.endswith("/tasks/leases") for p in self.requests) > 1:
                self._answer(204, None)
                return
            grant = {
                "task_id": "t" * 64,
                "lease_id": "l1",
                "epoch": 1,
                "expires_at": time.time() + 60,
                "lease_seconds": 60.0,
                "heartbeat_seconds": 20.0,
                "spec": SPEC.model_dump(mode="json"),
                "job_ids": ["j1"],
            }
            self._answer(200, {"leases": [grant], "batch_max": 16})
        elif self.path.endswith(("/heartbeats", "/outcomes")):
            items = body.get("leases") or body.get("outcomes") or []
            answers = [{"task_id": i["task_id"], "status": 200, "answer": {}} for i in items]
            self.requests.extend(f"{self.path}:{'result' in i}" for i in items)
            self._answer(200, {"items": answers})
        else:
            self._answer(404, {"code": "not_found", "detail": self.path})

    def do_GET(self) -> None:
        self.requests.append(self.path)
        self._answer(404, {"code": "not_found", "detail": self.path})

    def _answer(self, status: int, body: object) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def worker_api() -> Iterator[tuple[str, list[str]]]:
    requests: list[str] = []
    handler = type("Handler", (WorkerApi,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def test_pull_worker_runs_a_task_without_loading_the_control_plane(
    tmp_path: Path, worker_api: tuple[str, list[str]]
) -> None:
    url, requests = worker_api
    token_file = tmp_path / "token.json"
    now = time.time()
    token = {
        "api": url,
        "server_id": "s0123456789abcdef",
        "worker_token": "zpe_worker_x_secret",
        "token_issued_at": now,
        "token_expires_at": now + 86400,
    }
    token_file.write_text(json.dumps(token))
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZPE_")}
    env |= {"ZPE_SCRATCH_DIR": str(tmp_path), "ZPE_LOG_LEVEL": "WARNING"}
    args = ["pull", "--once", "--token-file", str(token_file), "--engines", "mock"]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args, "--poll-wait", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("MODULES ")]
    assert lines, done.stdout + done.stderr
    report = json.loads(lines[-1].removeprefix("MODULES "))
    assert report["code"] == 0, done.stderr
    # It went all the way: leased, computed with the mock engine, posted the result.
    assert any(p.endswith("/tasks/leases") for p in requests)
    assert any(p.endswith("/outcomes:True") for p in requests), requests
    modules: list[str] = report["modules"]
    assert "zpe_worker.pull" in modules and "zpe_core.jobs.compute" in modules
    loaded = sorted(m for m in modules for f in FORBIDDEN if m == f or m.startswith(f + "."))
    assert loaded == []
