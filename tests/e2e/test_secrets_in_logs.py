"""Secrets never appear in logs, answers or stored records: a full run in real processes.

An API process (``zpe serve``, http-pull mode, API keys required, an admin
token), a pull worker (``zpe-worker pull``, enrolled with an enroll token from
its environment) and a push worker (``zpe-worker serve``, shared secret) run a
whole story at ``ZPE_LOG_LEVEL=DEBUG``: keys issued and revoked, a job done
through the pull worker, a token renewed, refused and invalid requests of every
kind, the worker revoked (it stops), a second job run by pushes to the push
worker. Then everything is scanned for every secret value that was handed out
(and, for our ``zpe_<kind>_<id>_<secret>`` tokens, for the secret part alone):
stdout and stderr of the three processes, every response's status line,
headers and body (an answer that issues a credential may carry that one
credential), and every file of the store.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.servers import free_port, push_worker_argv, wait_until_up
from zpe_core.store import open_store

SAMPLES = Path(__file__).resolve().parents[2] / "samples"

pytestmark = pytest.mark.slow


@dataclass
class Proc:
    """A process whose stdout and stderr go to their own files."""

    name: str
    argv: list[str]
    env: dict[str, str]
    logs: Path
    proc: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self._out = open(self.logs / f"{self.name}.stdout", "wb")  # noqa: SIM115
        self._err = open(self.logs / f"{self.name}.stderr", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self._out, stderr=self._err)

    def wait_ready(self, url: str) -> None:
        # Start-up alone can take a minute under load.
        wait_until_up(url, self.proc, log=self.output, timeout=180)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._out.close()
        self._err.close()
        return code

    def output(self) -> str:
        return "".join(
            (self.logs / f"{self.name}.{kind}").read_text(errors="replace")
            for kind in ("stdout", "stderr")
        )


@dataclass
class Recorder:
    """Every answer the test received: status line, headers and body."""

    answers: list[str] = field(default_factory=list)
    #: credential -> how many answers handed it out (they may carry it, nobody else)
    issued: dict[str, int] = field(default_factory=dict)

    def hook(self, response: httpx.Response) -> None:
        response.read()
        text = f"{response.status_code} {response.request.url}\n"
        text += "".join(f"{k}: {v}\n" for k, v in response.headers.items()) + response.text
        if response.headers.get("content-type", "").startswith("application/json"):
            data = response.json()
            if isinstance(data, dict):
                for name in ("key", "token", "worker_token"):
                    value = data.get(name)
                    if isinstance(value, str) and value in text:
                        # The one place this credential may appear: the answer issuing it.
                        self.issued[value] = self.issued.get(value, 0) + 1
                        text = text.replace(value, "[issued here]")
        self.answers.append(text)


def secret_forms(value: str) -> list[str]:
    """The value, and for ``zpe_<kind>_<id>_<secret>`` tokens the secret part too."""
    forms = [value]
    if value.startswith("zpe_") and value.count("_") >= 3:
        forms.append(value.split("_", 3)[3])
    return forms


def find_leaks(haystacks: dict[str, str], values: dict[str, str]) -> list[str]:
    """``where: which secret`` for every secret (in any form) found in any haystack."""
    leaks = []
    for where, text in haystacks.items():
        for name, value in values.items():
            for form in secret_forms(value):
                if form in text:
                    at = text.index(form)
                    leaks.append(f"{where}: {name} ... {text[max(0, at - 80) : at + 20]!r}")
    return leaks


def test_the_scanner_finds_a_planted_secret() -> None:
    """The scanner itself can fail: a whole token, its bare secret part, a plain value."""
    token = "zpe_worker_s0123456789abcdef_" + "Q" * 43
    values = {"worker token": token, "admin": "admin-0123456789abcdef"}
    assert find_leaks({"clean": "zpe_worker_s0123456789abcdef_[redacted]"}, values) == []
    assert len(find_leaks({"log": f'{{"msg": "got {token}"}}'}, values)) == 2
    assert len(find_leaks({"log": "secret=" + "Q" * 43}, values)) == 1
    assert len(find_leaks({"body": "x admin-0123456789abcdef y"}, values)) == 1


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "logs").mkdir()
    yield tmp_path


def test_no_secret_in_logs_answers_or_records(run_dir: Path) -> None:
    logs, store_dir = run_dir / "logs", run_dir / "store"
    store_url = f"file://{store_dir}"
    admin_token = "adm-" + secrets.token_urlsafe(32)
    push_secret = "push-" + secrets.token_urlsafe(32)
    base_env = {
        **os.environ,
        "ZPE_LOG_LEVEL": "DEBUG",
        "ZPE_DEFAULT_ENGINE": "mock",
        "ZPE_MOCK_DELAY_SECONDS": "0",
    }
    for name in ("ZPE_ENROLL_TOKEN", "ZPE_API_KEY", "ZPE_ADMIN_TOKEN", "ZPE_PUSH_SHARED_SECRET"):
        base_env.pop(name, None)
    api_port, push_port = free_port(), free_port()
    api_url, push_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{push_port}"
    procs: list[Proc] = []
    recorder = Recorder()
    client = httpx.Client(base_url=api_url, timeout=30, event_hooks={"response": [recorder.hook]})
    pusher = httpx.Client(base_url=push_url, timeout=30, event_hooks={"response": [recorder.hook]})
    try:
        api = Proc(
            "api",
            [sys.executable, "-m", "zpe_api.cli", "serve", "--port", str(api_port)],
            {
                **base_env,
                "ZPE_STORE_URL": store_url,
                "ZPE_EXECUTION_MODE": "http-pull",
                "ZPE_AUTH_MODE": "api-keys",
                "ZPE_ADMIN_TOKEN": admin_token,
                "ZPE_LEASE_SECONDS": "5",
                "ZPE_HEARTBEAT_SECONDS": "0.5",
                "ZPE_REAPER_INTERVAL_SECONDS": "0.3",
                "ZPE_LEASE_POLL_MAX_SECONDS": "1",
            },
            logs,
        )
        procs.append(api)
        push = Proc(
            "push-worker",
            push_worker_argv(push_port),
            {
                **base_env,
                "ZPE_STORE_URL": store_url,
                "ZPE_PUSH_SHARED_SECRET": push_secret,
                # The secret is for the local emulator only (nobody listens there: the
                # test pushes to the worker itself).
                "ZPE_TASKS_EMULATOR_HOST": "127.0.0.1:9",
            },
            logs,
        )  # fmt: skip
        procs.append(push)
        api.wait_ready(f"{api_url}/readyz")
        push.wait_ready(f"{push_url}/healthz")
        admin = {"Authorization": f"Bearer {admin_token}"}

        # Keys and an enroll token, issued by the admin.
        alice_key = client.post(
            "/calc/zpe/admin/api-keys", json={"owner": "alice"}, headers=admin
        ).json()["key"]
        bob = client.post("/calc/zpe/admin/api-keys", json={"owner": "bob"}, headers=admin)
        bob_key, bob_key_id = bob.json()["key"], bob.json()["key_id"]
        enroll = client.post("/calc/zpe/compute/enroll-tokens", json={}, headers=admin)
        assert enroll.status_code == 201, enroll.text
        enroll_token = enroll.json()["token"]
        alice = {"Authorization": f"Bearer {alice_key}"}

        # A pull worker enrolls with the enroll token from its environment.
        token_file = run_dir / "worker-token.json"
        pull_env = {**base_env, "ZPE_ENROLL_TOKEN": enroll_token}
        pull_env.pop("ZPE_STORE_URL", None)  # a pull worker never sees the store
        pull = Proc(
            "pull-worker",
            [sys.executable, "-m", "zpe_worker.cli", "pull", "--api", api_url,
             "--token-file", str(token_file), "--name", "w1", "--engines", "mock",
             "--poll-wait", "1", "--idle-max", "0.3", "--grace", "10"],
            pull_env,
            logs,
        )  # fmt: skip
        procs.append(pull)

        # A job done through the pull worker; everything about it read back.
        body = {"input_text": (SAMPLES / "h2_zpe.in").read_text(), "engine": "mock"}
        created = client.post(
            "/calc/zpe/jobs", json=body, headers={**alice, "Idempotency-Key": "k-1"}
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        assert wait_done(client, job_id, alice)["state"] == "done"
        for path in ("", "/tasks", "/result", "/files?kind=summary", "/files?kind=freqs"):
            assert client.get(f"/calc/zpe/jobs/{job_id}{path}", headers=alice).is_success
        assert client.get("/calc/zpe/jobs", headers=alice).is_success
        again = client.post(
            "/calc/zpe/jobs", json=body, headers={**alice, "Idempotency-Key": "k-1"}
        )
        assert again.status_code == 200

        creds = json.loads(token_file.read_text())
        worker_token, server_id = creds["worker_token"], creds["server_id"]
        worker = {"Authorization": f"Bearer {worker_token}"}
        renewed = client.post(f"/calc/zpe/compute/servers/{server_id}/token", headers=worker)
        assert renewed.status_code == 200, renewed.text
        renewed_token = renewed.json()["worker_token"]

        # Refusals and errors of every kind, each presenting some credential.
        refused = [
            client.get(f"/calc/zpe/jobs/{job_id}"),
            client.get("/calc/zpe/jobs", headers=admin),
            client.get("/calc/zpe/jobs", headers=worker),
            client.get("/calc/zpe/jobs", headers={"Authorization": f"Bearer {enroll_token}"}),
            client.get("/calc/zpe/jobs", headers={"Authorization": f"Bearer {alice_key}x"}),
            client.get("/calc/zpe/jobs", headers={"Authorization": f"Basic {alice_key}"}),
            client.get("/calc/zpe/admin/dead-letters", headers=alice),
            client.get(
                "/calc/zpe/admin/dead-letters",
                headers={"Authorization": f"Bearer {admin_token}x"},
            ),
            client.post(
                "/calc/zpe/compute/servers",
                json={"name": "again", "capabilities": {"engines": {"mock": "mock-1"}}},
                headers={"Authorization": f"Bearer {enroll_token}"},
            ),
            client.post("/calc/zpe/compute/tasks/lease", json={}, headers=alice),
            client.post(
                "/calc/zpe/compute/tasks/lease",
                json={},
                headers={"Authorization": f"Bearer {worker_token[:-2]}zz"},
            ),
        ]
        assert [r.status_code for r in refused] == [401] * len(refused), [r.text for r in refused]
        assert client.delete(f"/calc/zpe/admin/api-keys/{bob_key_id}", headers=admin).is_success
        revoked = client.get("/calc/zpe/jobs", headers={"Authorization": f"Bearer {bob_key}"})
        assert revoked.status_code == 401 and revoked.json()["code"] == "api_key_revoked"
        bad = client.post("/calc/zpe/jobs", json={"input_text": "nonsense"}, headers=alice)
        assert bad.status_code == 422
        assert client.get("/calc/zpe/jobs/j" + "0" * 32, headers=alice).status_code == 404

        # The admin revokes the pull worker: its next call is refused and it stops (exit 3).
        gone = client.delete(f"/calc/zpe/compute/servers/{server_id}", headers=admin)
        assert gone.is_success
        assert pull.proc.wait(timeout=30) == 3

        # A second job, run task by task through the push worker.
        body2 = {"input_text": (SAMPLES / "co_zpe.in").read_text(), "engine": "mock"}
        job2 = client.post("/calc/zpe/jobs", json=body2, headers=alice).json()["job_id"]
        store = open_store(store_url)
        found = store.get_job(job2)
        assert found is not None
        task_ids = [ref.task_id for ref in found.value.tasks]
        store.close()
        wrong = pusher.post(
            "/internal/tasks/run",
            json={"task_id": task_ids[0]},
            headers={"X-ZPE-Push-Secret": push_secret[:-1]},
        )
        assert wrong.status_code == 401
        for task_id in task_ids:
            ran = pusher.post(
                "/internal/tasks/run",
                json={"task_id": task_id},
                headers={"X-ZPE-Push-Secret": push_secret},
            )
            assert ran.status_code == 200, ran.text
        assert wait_done(client, job2, alice)["state"] == "done"
    finally:
        client.close()
        pusher.close()
        for proc in reversed(procs):
            proc.stop()

    outputs = {proc.name: proc.output() for proc in procs}
    # The capture is real: each process logged what it did (JSON lines).
    assert '"api started"' in outputs["api"] and job_id in outputs["api"]
    assert '"task finished"' in outputs["pull-worker"] and '"enrolled"' in outputs["pull-worker"]
    assert '"task delivery handled"' in outputs["push-worker"]
    assert "push request refused" in outputs["push-worker"]

    values = {
        "admin token": admin_token,
        "push secret": push_secret,
        "enroll token": enroll_token,
        "worker token": worker_token,
        "renewed worker token": renewed_token,
        "alice's API key": alice_key,
        "bob's API key": bob_key,
    }
    haystacks: dict[str, str] = {}
    for proc in procs:
        for kind in ("stdout", "stderr"):
            log_file = logs / f"{proc.name}.{kind}"
            haystacks[log_file.name] = log_file.read_text(errors="replace")
    for index, answer in enumerate(recorder.answers):
        haystacks[f"answer #{index} ({answer.splitlines()[0]})"] = answer
    files = [file for file in store_dir.rglob("*") if file.is_file()]
    assert len(files) > 20, "the store holds the jobs, tasks and tokens"
    for file in files:
        haystacks[f"store/{file.relative_to(store_dir)}"] = file.read_bytes().decode("latin-1")

    leaks = find_leaks(haystacks, values)
    assert not leaks, "secrets found:\n" + "\n".join(leaks)
    # Each credential was handed out exactly once, in the answer that issued it.
    assert recorder.issued == {
        alice_key: 1,
        bob_key: 1,
        enroll_token: 1,
        renewed_token: 1,
    }, recorder.issued
    scanned = sum(len(text) for text in haystacks.values())
    print(
        f"secrets scan: {len(values)} secrets in {len(haystacks)} haystacks "
        f"({len(recorder.answers)} answers, {len(files)} store files, {scanned} characters): "
        "0 found"
    )


def wait_done(client: httpx.Client, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 180  # includes the pull worker's start-up
    while True:
        status: dict[str, Any] = client.get(f"/calc/zpe/jobs/{job_id}", headers=headers).json()
        if status["state"] in ("done", "failed", "cancelled"):
            return status
        assert time.monotonic() < deadline, f"job did not finish: {status}"
        time.sleep(0.1)
