"""The access matrix: every route of the API app, called as every kind of caller.

The routes are read from the app itself (``app.routes``), so an endpoint added
without a row in :data:`EXPECTED` (and a way to call it in :data:`REQUESTS`)
fails ``test_every_route_has_a_matrix_row``: access rules are decided, never
inherited by accident.

The app runs with ``ZPE_AUTH_MODE=api-keys``, an admin token and the
``http-pull`` mode, on real objects: user A's finished job (its result and
files exist), A's queued job (to cancel), tasks leased by the worker (one per
worker endpoint), a dead letter, a revoked server, a spare API key. User B
calls with A's ids; another owner's job answers 404 exactly as an absent one.

Principals: ``anonymous`` (no credentials), ``user_a`` / ``user_b`` (API keys),
``worker`` (a valid worker token), ``revoked_worker`` (the token of a revoked
server), ``enroll`` (a fresh, valid enroll token: the only credential that may
register a server) and ``admin`` (``ZPE_ADMIN_TOKEN``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.routing import Mount

from tests.api.conftest import make_settings
from zpe_api.main import create_app
from zpe_client.models import JobRequest, TaskSpec
from zpe_core.engines.base import MOCK_VERSION
from zpe_core.jobs.compute import compute_task
from zpe_core.settings import Settings

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
ADMIN = "matrix-admin-token-0123456789abcdef"
MOCK_CAPS = {"engines": {"mock": MOCK_VERSION}, "cores": 1}

PRINCIPALS = ("anonymous", "user_a", "user_b", "worker", "revoked_worker", "enroll", "admin")

Row = dict[str, int]


def row(default: int, **cells: int) -> Row:
    """Every principal answers ``default`` except those named."""
    unknown = set(cells) - set(PRINCIPALS)
    assert not unknown, unknown
    return {p: cells.get(p, default) for p in PRINCIPALS}


PUBLIC = row(200)
ADMIN_ONLY = row(401, admin=200)
ADMIN_CREATES = row(401, admin=201)
USERS = row(401, user_a=200, user_b=200)  # any user, on their own data
A_JOB = row(401, user_a=200, user_b=404)  # A's job: B gets 404 as if it did not exist
WORKER_ONLY = row(401, worker=200)

#: (method, route path) -> the status each principal gets. The design, cell by cell.
EXPECTED: dict[tuple[str, str], Row] = {
    # Documentation, probes and the static UI: public (no data in them).
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,  # aggregate counts only; scrape it on a private network
    ("GET", "/"): PUBLIC,
    ("GET", "/jobs"): PUBLIC,
    ("GET", "/jobs/{job_id}"): PUBLIC,  # the page; its data comes from the user API
    ("GET", "/compare"): PUBLIC,  # the page; its data comes from the user API
    ("GET", "/ui"): PUBLIC,  # the mount of static assets
    # User API keys: admin only.
    ("POST", "/calc/zpe/admin/api-keys"): ADMIN_CREATES,
    ("GET", "/calc/zpe/admin/api-keys"): ADMIN_ONLY,
    ("DELETE", "/calc/zpe/admin/api-keys/{key_id}"): ADMIN_ONLY,
    # The user API: API keys only (a worker, enroll or admin token is not an API key).
    ("POST", "/calc/zpe/jobs"): row(401, user_a=201, user_b=201),
    ("GET", "/calc/zpe/jobs"): USERS,
    ("GET", "/calc/zpe/jobs/{job_id}"): A_JOB,
    ("GET", "/calc/zpe/jobs/{job_id}/tasks"): A_JOB,
    ("GET", "/calc/zpe/jobs/{job_id}/result"): A_JOB,
    ("GET", "/calc/zpe/jobs/{job_id}/files"): A_JOB,
    ("POST", "/calc/zpe/jobs/{job_id}/cancel"): A_JOB,
    ("POST", "/calc/zpe/parse"): USERS,
    ("GET", "/calc/zpe/config"): USERS,
    # Enrollment and servers.
    ("POST", "/calc/zpe/compute/enroll-tokens"): ADMIN_CREATES,
    ("POST", "/calc/zpe/compute/servers"): row(401, enroll=201),
    ("GET", "/calc/zpe/compute/servers"): ADMIN_ONLY,
    ("GET", "/calc/zpe/compute/servers/{server_id}"): ADMIN_ONLY,
    ("DELETE", "/calc/zpe/compute/servers/{server_id}"): ADMIN_ONLY,
    ("POST", "/calc/zpe/compute/servers/{server_id}/token"): WORKER_ONLY,
    # Leases and task outcomes: the worker holding the lease.
    ("POST", "/calc/zpe/compute/tasks/lease"): WORKER_ONLY,
    ("POST", "/calc/zpe/compute/tasks/{task_id}/heartbeat"): WORKER_ONLY,
    ("POST", "/calc/zpe/compute/tasks/{task_id}/release"): WORKER_ONLY,
    ("POST", "/calc/zpe/compute/tasks/{task_id}/result"): WORKER_ONLY,
    ("POST", "/calc/zpe/compute/tasks/{task_id}/failed"): WORKER_ONLY,
    # The batched protocol (issue 17): several leases and outcomes per request.
    ("POST", "/calc/zpe/compute/tasks/leases"): WORKER_ONLY,
    ("POST", "/calc/zpe/compute/tasks/heartbeats"): WORKER_ONLY,
    ("POST", "/calc/zpe/compute/tasks/outcomes"): WORKER_ONLY,
    # Warm-start densities, under the lease: the holder ships its reference's (200) and
    # finds none shipped for the reference itself (404).
    ("PUT", "/calc/zpe/compute/tasks/{task_id}/reference-density"): WORKER_ONLY,
    ("GET", "/calc/zpe/compute/tasks/{task_id}/reference-density"): row(401, worker=404),
    # Operations: admin only.
    ("GET", "/calc/zpe/admin/dead-letters"): ADMIN_ONLY,
    ("POST", "/calc/zpe/admin/dead-letters/{task_id}/requeue"): ADMIN_ONLY,
    ("GET", "/calc/zpe/admin/switches"): ADMIN_ONLY,
    ("PUT", "/calc/zpe/admin/switches"): ADMIN_ONLY,
}


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path) the app serves; a mount counts as ``GET <prefix>``.

    ``HEAD`` is left out where Starlette adds it to a ``GET`` route (the same handler).
    """
    found: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, Mount):
            found.add(("GET", route.path))
            continue
        methods = set(context.methods or ())
        assert methods, f"a route without methods: {context.path}"
        if "GET" in methods:
            methods.discard("HEAD")
        found |= {(method, str(context.path)) for method in methods}
    return found


# ---------------------------------------------------------------------- the world


@dataclass
class World:
    """Real objects the calls act on, and every credential handed out so far."""

    client: TestClient
    bearer: dict[str, str]  # principal -> its token (not anonymous, not enroll)
    worker_server_id: str
    victim_server_id: str
    done_job: str
    queued_job: str
    dead_task: str
    spare_key_id: str
    grants: dict[str, dict[str, Any]]  # worker endpoint -> the lease it acts on
    secrets: set[str] = field(default_factory=set)

    def headers(self, principal: str) -> dict[str, str]:
        if principal == "anonymous":
            return {}
        if principal == "enroll":
            token = issue_enroll_token(self.client)
            self.secrets.add(token)
            return bearer(token)
        return bearer(self.bearer[principal])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN_HEADERS = bearer(ADMIN)


def issue_enroll_token(client: TestClient) -> str:
    response = client.post("/calc/zpe/compute/enroll-tokens", json={}, headers=ADMIN_HEADERS)
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def enroll(client: TestClient, name: str) -> tuple[str, str]:
    response = client.post(
        "/calc/zpe/compute/servers",
        json={"name": name, "capabilities": MOCK_CAPS},
        headers=bearer(issue_enroll_token(client)),
    )
    assert response.status_code == 201, response.text
    return response.json()["server_id"], response.json()["worker_token"]


def issue_key(client: TestClient, owner: str) -> tuple[str, str]:
    response = client.post("/calc/zpe/admin/api-keys", json={"owner": owner}, headers=ADMIN_HEADERS)
    assert response.status_code == 201, response.text
    return response.json()["key_id"], response.json()["key"]


def submit(client: TestClient, key: str, sample: str) -> str:
    body = {"input_text": (SAMPLES / sample).read_text(), "engine": "mock"}
    response = client.post("/calc/zpe/jobs", json=body, headers=bearer(key))
    assert response.status_code == 201, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def lease(client: TestClient, token: str) -> dict[str, Any] | None:
    response = client.post(
        "/calc/zpe/compute/tasks/lease", json={"wait_seconds": 0}, headers=bearer(token)
    )
    if response.status_code == 204:
        return None
    assert response.status_code == 200, response.text
    grant: dict[str, Any] = response.json()
    return grant


def result_body(grant: dict[str, Any]) -> dict[str, Any]:
    result = compute_task(TaskSpec.model_validate(grant["spec"]), Settings())
    return {
        "epoch": grant["epoch"],
        "lease_id": grant["lease_id"],
        "event_id": uuid.uuid4().hex,
        "result": result.model_dump(mode="json", exclude={"worker_id"}),
    }


def failure_body(grant: dict[str, Any], *, retryable: bool) -> dict[str, Any]:
    return {
        "epoch": grant["epoch"],
        "lease_id": grant["lease_id"],
        "event_id": uuid.uuid4().hex,
        "retryable": retryable,
        "code": "pwx_crashed" if retryable else "pwx_input_error",
        "reason": "node went away" if retryable else "pw.x said no",
    }


def lease_ref(grant: dict[str, Any]) -> dict[str, Any]:
    return {"epoch": grant["epoch"], "lease_id": grant["lease_id"]}


def lease_headers(grant: dict[str, Any]) -> dict[str, str]:
    """The lease as the density routes take it (their bodies are the density itself)."""
    return {"X-Lease-Epoch": str(grant["epoch"]), "X-Lease-Id": grant["lease_id"]}


def matrix_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "execution_mode": "http-pull",
        "auth_mode": "api-keys",
        "admin_token": SecretStr(ADMIN),
        "lease_seconds": 60.0,
        "lease_poll_max_seconds": 1.0,
        "backoff_base_seconds": 0.01,
        "backoff_cap_seconds": 0.02,
    }
    base.update(overrides)
    return make_settings(**base)


@pytest.fixture
def world() -> Iterator[World]:
    with TestClient(create_app(matrix_settings())) as client:
        _, key_a = issue_key(client, "alice")
        _, key_b = issue_key(client, "bob")
        spare_key_id, spare_key = issue_key(client, "carol")
        worker_id, worker_token = enroll(client, "worker")
        revoked_id, revoked_token = enroll(client, "revoked")
        victim_id, victim_token = enroll(client, "victim")
        assert client.delete(
            f"/calc/zpe/compute/servers/{revoked_id}", headers=ADMIN_HEADERS
        ).is_success

        # A's job, finished by the worker: its status, tasks, result and files exist.
        done_job = submit(client, key_a, "h2_zpe.in")
        while (grant := lease(client, worker_token)) is not None:
            posted = client.post(
                f"/calc/zpe/compute/tasks/{grant['task_id']}/result",
                json=result_body(grant),
                headers=bearer(worker_token),
            )
            assert posted.status_code == 200, posted.text
        status = client.get(f"/calc/zpe/jobs/{done_job}", headers=bearer(key_a)).json()
        assert status["state"] == "done", status

        # A dead letter: a permanent failure of one task of A's CO job.
        submit(client, key_a, "co_zpe.in")
        grant = lease(client, worker_token)
        assert grant is not None
        failed = client.post(
            f"/calc/zpe/compute/tasks/{grant['task_id']}/failed",
            json=failure_body(grant, retryable=False),
            headers=bearer(worker_token),
        )
        assert failed.status_code == 200, failed.text
        dead_task = grant["task_id"]

        # Leases the worker holds, one per worker endpoint; more tasks stay queued.
        submit(client, key_a, "h2o_zpe.in")
        grants: dict[str, dict[str, Any]] = {}
        for name in ("heartbeat", "release", "result", "failed", "heartbeats", "outcomes"):
            leased = lease(client, worker_token)
            assert leased is not None
            grants[name] = leased
        queued_job = submit(client, key_a, "nh3_zpe.in")

        yield World(
            client=client,
            bearer={
                "user_a": key_a,
                "user_b": key_b,
                "worker": worker_token,
                "revoked_worker": revoked_token,
                "admin": ADMIN,
            },
            worker_server_id=worker_id,
            victim_server_id=victim_id,
            done_job=done_job,
            queued_job=queued_job,
            dead_task=dead_task,
            spare_key_id=spare_key_id,
            grants=grants,
            secrets={ADMIN, key_a, key_b, spare_key, worker_token, revoked_token, victim_token},
        )


# ---------------------------------------------------------------------- the calls

#: How to call each route meaningfully: (path with real ids, JSON body or None).
#: (url, JSON body) or (url, body, extra headers).
Request = tuple[str, dict[str, Any] | None] | tuple[str, dict[str, Any] | None, dict[str, str]]
REQUESTS: dict[tuple[str, str], Callable[[World], Request]] = {
    ("GET", "/openapi.json"): lambda w: ("/openapi.json", None),
    ("GET", "/docs"): lambda w: ("/docs", None),
    ("GET", "/docs/oauth2-redirect"): lambda w: ("/docs/oauth2-redirect", None),
    ("GET", "/redoc"): lambda w: ("/redoc", None),
    ("GET", "/healthz"): lambda w: ("/healthz", None),
    ("GET", "/readyz"): lambda w: ("/readyz", None),
    ("GET", "/metrics"): lambda w: ("/metrics", None),
    ("GET", "/"): lambda w: ("/", None),
    ("GET", "/jobs"): lambda w: ("/jobs", None),
    ("GET", "/jobs/{job_id}"): lambda w: (f"/jobs/{w.done_job}", None),
    ("GET", "/compare"): lambda w: (f"/compare?ids={w.done_job}", None),
    ("GET", "/ui"): lambda w: ("/ui/style.css", None),
    ("POST", "/calc/zpe/admin/api-keys"): lambda w: (
        "/calc/zpe/admin/api-keys",
        {"owner": "dave", "label": "matrix"},
    ),
    ("GET", "/calc/zpe/admin/api-keys"): lambda w: ("/calc/zpe/admin/api-keys", None),
    ("DELETE", "/calc/zpe/admin/api-keys/{key_id}"): lambda w: (
        f"/calc/zpe/admin/api-keys/{w.spare_key_id}",
        None,
    ),
    ("POST", "/calc/zpe/jobs"): lambda w: (
        "/calc/zpe/jobs",
        {"input_text": (SAMPLES / "h2_zpe.in").read_text(), "engine": "mock"},
    ),
    ("GET", "/calc/zpe/jobs"): lambda w: ("/calc/zpe/jobs", None),
    ("GET", "/calc/zpe/jobs/{job_id}"): lambda w: (f"/calc/zpe/jobs/{w.done_job}", None),
    ("GET", "/calc/zpe/jobs/{job_id}/tasks"): lambda w: (
        f"/calc/zpe/jobs/{w.done_job}/tasks",
        None,
    ),
    ("GET", "/calc/zpe/jobs/{job_id}/result"): lambda w: (
        f"/calc/zpe/jobs/{w.done_job}/result",
        None,
    ),
    ("GET", "/calc/zpe/jobs/{job_id}/files"): lambda w: (
        f"/calc/zpe/jobs/{w.done_job}/files?kind=freqs",
        None,
    ),
    ("POST", "/calc/zpe/jobs/{job_id}/cancel"): lambda w: (
        f"/calc/zpe/jobs/{w.queued_job}/cancel",
        None,
    ),
    ("POST", "/calc/zpe/parse"): lambda w: (
        "/calc/zpe/parse",
        {"input_text": (SAMPLES / "h2o_zpe.in").read_text()},
    ),
    ("GET", "/calc/zpe/config"): lambda w: ("/calc/zpe/config", None),
    ("POST", "/calc/zpe/compute/enroll-tokens"): lambda w: (
        "/calc/zpe/compute/enroll-tokens",
        {"note": "matrix"},
    ),
    ("POST", "/calc/zpe/compute/servers"): lambda w: (
        "/calc/zpe/compute/servers",
        {"name": "newcomer", "capabilities": MOCK_CAPS},
    ),
    ("GET", "/calc/zpe/compute/servers"): lambda w: ("/calc/zpe/compute/servers", None),
    ("GET", "/calc/zpe/compute/servers/{server_id}"): lambda w: (
        f"/calc/zpe/compute/servers/{w.worker_server_id}",
        None,
    ),
    ("DELETE", "/calc/zpe/compute/servers/{server_id}"): lambda w: (
        f"/calc/zpe/compute/servers/{w.victim_server_id}",
        None,
    ),
    ("POST", "/calc/zpe/compute/servers/{server_id}/token"): lambda w: (
        f"/calc/zpe/compute/servers/{w.worker_server_id}/token",
        None,
    ),
    ("POST", "/calc/zpe/compute/tasks/lease"): lambda w: (
        "/calc/zpe/compute/tasks/lease",
        {"wait_seconds": 0},
    ),
    ("POST", "/calc/zpe/compute/tasks/{task_id}/heartbeat"): lambda w: (
        f"/calc/zpe/compute/tasks/{w.grants['heartbeat']['task_id']}/heartbeat",
        lease_ref(w.grants["heartbeat"]),
    ),
    ("POST", "/calc/zpe/compute/tasks/{task_id}/release"): lambda w: (
        f"/calc/zpe/compute/tasks/{w.grants['release']['task_id']}/release",
        lease_ref(w.grants["release"]),
    ),
    ("POST", "/calc/zpe/compute/tasks/{task_id}/result"): lambda w: (
        f"/calc/zpe/compute/tasks/{w.grants['result']['task_id']}/result",
        result_body(w.grants["result"]),
    ),
    ("POST", "/calc/zpe/compute/tasks/{task_id}/failed"): lambda w: (
        f"/calc/zpe/compute/tasks/{w.grants['failed']['task_id']}/failed",
        failure_body(w.grants["failed"], retryable=True),
    ),
    ("POST", "/calc/zpe/compute/tasks/leases"): lambda w: (
        "/calc/zpe/compute/tasks/leases",
        {"wait_seconds": 0, "max_tasks": 2},
    ),
    ("POST", "/calc/zpe/compute/tasks/heartbeats"): lambda w: (
        "/calc/zpe/compute/tasks/heartbeats",
        {
            "leases": [
                {"task_id": w.grants["heartbeats"]["task_id"], **lease_ref(w.grants["heartbeats"])}
            ]
        },
    ),
    ("POST", "/calc/zpe/compute/tasks/outcomes"): lambda w: (
        "/calc/zpe/compute/tasks/outcomes",
        {
            "outcomes": [
                {"task_id": w.grants["outcomes"]["task_id"], **result_body(w.grants["outcomes"])}
            ]
        },
    ),
    ("PUT", "/calc/zpe/compute/tasks/{task_id}/reference-density"): lambda w: (
        f"/calc/zpe/compute/tasks/{w.grants['heartbeat']['task_id']}/reference-density",
        None,
        lease_headers(w.grants["heartbeat"]),
    ),
    ("GET", "/calc/zpe/compute/tasks/{task_id}/reference-density"): lambda w: (
        f"/calc/zpe/compute/tasks/{w.grants['heartbeat']['task_id']}/reference-density",
        None,
        lease_headers(w.grants["heartbeat"]),
    ),
    ("GET", "/calc/zpe/admin/dead-letters"): lambda w: ("/calc/zpe/admin/dead-letters", None),
    ("POST", "/calc/zpe/admin/dead-letters/{task_id}/requeue"): lambda w: (
        f"/calc/zpe/admin/dead-letters/{w.dead_task}/requeue",
        {"resubmit_jobs": True},
    ),
    ("GET", "/calc/zpe/admin/switches"): lambda w: ("/calc/zpe/admin/switches", None),
    ("PUT", "/calc/zpe/admin/switches"): lambda w: (
        "/calc/zpe/admin/switches",
        {"submission_enabled": True, "dequeue_enabled": True, "actor": "matrix", "reason": "t"},
    ),
}

#: Fields of answers that hand out a new credential (allowed to carry it, once).
ISSUED_FIELDS = ("key", "token", "worker_token")


# ---------------------------------------------------------------------- the tests


def test_every_route_has_a_matrix_row() -> None:
    """A new endpoint without a decided row fails here, and so does a stale row."""
    routes = app_routes(create_app(matrix_settings()))
    assert routes - set(EXPECTED) == set(), "routes without an access-matrix row"
    assert set(EXPECTED) - routes == set(), "matrix rows for routes that do not exist"
    assert set(REQUESTS) == set(EXPECTED)
    assert all(set(cells) == set(PRINCIPALS) for cells in EXPECTED.values())


def test_access_matrix(world: World) -> None:
    client = world.client
    mismatches: list[str] = []
    cells = 0
    for (method, path), expected in EXPECTED.items():
        # Refused callers first: they must change nothing the allowed caller then acts on.
        order = sorted(PRINCIPALS, key=lambda p: 200 <= expected[p] < 300)
        for principal in order:
            url, body, *extra = REQUESTS[method, path](world)
            headers = {**world.headers(principal), **(extra[0] if extra else {})}
            response = client.request(method, url, json=body, headers=headers)
            cells += 1
            want = expected[principal]
            where = f"{method} {path} as {principal}"
            if response.status_code != want:
                mismatches.append(f"{where}: {response.status_code} != {want} {response.text}")
                continue
            check_answer(world, where, principal, expected, response)
    assert not mismatches, "\n".join(mismatches)
    assert cells == len(EXPECTED) * len(PRINCIPALS)
    print(f"access matrix: {len(EXPECTED)} routes x {len(PRINCIPALS)} principals = {cells} cells")
    check_effects(world)


def check_answer(
    world: World, where: str, principal: str, expected: Row, response: httpx.Response
) -> None:
    """What an answer must (not) carry beyond its status."""
    status = response.status_code
    text = response.text + repr(sorted(response.headers.items()))
    if status >= 400:
        problem = response.json()
        assert problem["status"] == status and problem["code"], (where, problem)
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), where
            if principal == "anonymous":
                assert problem["code"].endswith("_required"), (where, problem)
            if principal == "revoked_worker" and expected["worker"] == 200:
                assert problem["code"] == "server_revoked", (where, problem)
        if status == 404 and principal != "worker":  # another owner's job: as if absent
            assert problem["code"] == "not_found", (where, problem)
    # No credential ever comes back, except the one this answer hands out.
    leaked = [s for s in world.secrets if s in text]
    assert not leaked, f"{where} answered a credential: {text[:300]}"
    if response.headers.get("content-type", "").startswith("application/json"):
        data = response.json()
        if isinstance(data, dict):
            world.secrets |= {str(data[f]) for f in ISSUED_FIELDS if f in data}
            if "worker_token" in data and principal == "worker":  # renewed
                world.bearer["worker"] = data["worker_token"]
    if principal == "user_b" and status == 200:
        # B sees none of A's jobs (the list, the parse answer...).
        assert world.done_job not in text and world.queued_job not in text, where


def check_effects(world: World) -> None:
    """The allowed cells really acted, and the refused ones changed nothing."""
    client = world.client
    admin = ADMIN_HEADERS
    a = bearer(world.bearer["user_a"])
    status = client.get(f"/calc/zpe/jobs/{world.queued_job}", headers=a).json()
    assert status["state"] == "cancelled"
    assert client.get(f"/calc/zpe/jobs/{world.done_job}", headers=a).json()["state"] == "done"
    victim = client.get(f"/calc/zpe/compute/servers/{world.victim_server_id}", headers=admin)
    assert victim.json()["revoked"] is True
    worker = client.get(f"/calc/zpe/compute/servers/{world.worker_server_id}", headers=admin)
    assert worker.json()["revoked"] is False
    keys = client.get("/calc/zpe/admin/api-keys", headers=admin).json()["api_keys"]
    assert [k["revoked_at"] is not None for k in keys if k["key_id"] == world.spare_key_id] == [
        True
    ]
    assert sum(k["owner"] == "dave" for k in keys) == 1  # issued once: by the admin
    letters = client.get("/calc/zpe/admin/dead-letters", headers=admin).json()["dead_letters"]
    assert world.dead_task not in [d["task_id"] for d in letters]  # re-queued
    store = client.app.state.store  # type: ignore[attr-defined]
    assert store.get_task(world.grants["result"]["task_id"]).value.state.value == "done"
    released = store.get_task(world.grants["release"]["task_id"]).value
    assert released.lease is None or released.lease.worker_id != world.worker_server_id
    servers = client.get("/calc/zpe/compute/servers", headers=admin).json()["servers"]
    assert sum(s["name"] == "newcomer" for s in servers) == 1  # enrolled once
    # A worker acts only as itself: another server's token cannot be renewed with its own.
    other = client.post(
        f"/calc/zpe/compute/servers/{world.victim_server_id}/token",
        headers=bearer(world.bearer["worker"]),
    )
    assert (other.status_code, other.json()["code"]) == (403, "not_your_server")
    mine = client.get("/calc/zpe/jobs", headers=a).json()["jobs"]
    theirs = client.get("/calc/zpe/jobs", headers=bearer(world.bearer["user_b"])).json()["jobs"]
    assert len(theirs) == 1 and theirs[0]["job_id"] not in {j["job_id"] for j in mine}


# ---------------------------------------------------------------------- auth mode none


def _allowed(expected: Row) -> set[str]:
    return {p for p, status in expected.items() if 200 <= status < 300}


ADMIN_ROUTES = [key for key, cells in EXPECTED.items() if _allowed(cells) == {"admin"}]
CREDENTIAL_ROUTES = [
    key for key, cells in EXPECTED.items() if _allowed(cells) in ({"worker"}, {"enroll"})
]


def _dummy(path: str) -> str:
    """A route path with made-up ids (the credential check comes before any lookup)."""
    return (
        path.replace("{key_id}", "0123456789abcdef")
        .replace("{server_id}", "s0123456789abcdef")
        .replace("{task_id}", "t" + "0" * 64)
    )


_REF = {"epoch": 1, "lease_id": "l1", "event_id": "e1"}
#: Well-formed bodies for the credential routes, so that only the credential can fail.
DUMMY_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/calc/zpe/compute/servers"): {"name": "n1", "capabilities": MOCK_CAPS},
    ("POST", "/calc/zpe/compute/tasks/lease"): {"wait_seconds": 0},
    ("POST", "/calc/zpe/compute/tasks/{task_id}/heartbeat"): {"epoch": 1, "lease_id": "l1"},
    ("POST", "/calc/zpe/compute/tasks/{task_id}/release"): {"epoch": 1, "lease_id": "l1"},
    ("POST", "/calc/zpe/compute/tasks/{task_id}/result"): {
        **_REF,
        "result": {
            "energy_ev": -1.0,
            "forces_ev_per_a": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
            "engine": "mock",
            "engine_version": MOCK_VERSION,
        },
    },
    ("POST", "/calc/zpe/compute/tasks/{task_id}/failed"): {
        **_REF,
        "retryable": True,
        "reason": "r",
    },
}


@pytest.mark.parametrize("admin_token", [None, ADMIN], ids=["no-admin-token", "admin-token"])
def test_auth_mode_none_keeps_admin_and_worker_routes_closed(admin_token: str | None) -> None:
    """``ZPE_AUTH_MODE=none`` opens only the user API: admin routes stay closed (403
    without an admin token, whatever is presented; 401 without the right one), and
    the worker API still wants a worker (or enroll) token."""
    settings = matrix_settings(
        auth_mode="none", admin_token=SecretStr(admin_token) if admin_token else None
    )
    attempts: list[dict[str, str]] = [
        {},
        bearer(""),
        bearer("guess-the-admin-token-0123456789"),
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
    ]
    assert len(ADMIN_ROUTES) >= 11 and len(CREDENTIAL_ROUTES) >= 7  # the derivation found them
    with TestClient(create_app(settings)) as client:
        for method, path in ADMIN_ROUTES:
            for headers in attempts:
                response = client.request(method, _dummy(path), json={}, headers=headers)
                where = (method, path, headers)
                if admin_token is None:
                    assert response.status_code == 403, (where, response.text)
                    assert response.json()["code"] == "admin_disabled", where
                else:
                    assert response.status_code == 401, (where, response.text)
        for method, path in CREDENTIAL_ROUTES:
            for headers in attempts:
                body = DUMMY_BODIES.get((method, path), {})
                response = client.request(method, _dummy(path), json=body, headers=headers)
                assert response.status_code == 401, (method, path, headers, response.text)
        # ... while the user API is open to the anonymous owner in this mode.
        body = {"input_text": (SAMPLES / "h2_zpe.in").read_text(), "engine": "mock"}
        assert client.post("/calc/zpe/jobs", json=body).status_code == 201
        assert client.post("/calc/zpe/parse", json=body).status_code == 200
        assert client.get("/calc/zpe/jobs").status_code == 200


# ---------------------------------------------------------------------- worker push app

PUSH_SECRET = "push-secret-for-the-matrix-0123456789"
PUSH_PRINCIPALS = (
    "anonymous",
    "wrong_secret",
    "api_bearer",
    "forged_oidc",
    "remote_secret",  # the right secret, from another machine: only loopback may use it
    "secret",
    "oidc",
)
#: (method, path) -> {push auth configured: {principal: status}}
PUSH_EXPECTED: dict[tuple[str, str], dict[str, dict[str, int]]] = {
    ("GET", "/healthz"): {
        "secret-only": dict.fromkeys(PUSH_PRINCIPALS, 200),
        "oidc+secret": dict.fromkeys(PUSH_PRINCIPALS, 200),
    },
    ("POST", "/internal/tasks/run"): {
        # No OIDC configured: a bearer token means nothing, even a valid one.
        "secret-only": {**dict.fromkeys(PUSH_PRINCIPALS, 401), "secret": 200},
        "oidc+secret": {**dict.fromkeys(PUSH_PRINCIPALS, 401), "secret": 200, "oidc": 200},
    },
}


@pytest.mark.parametrize("config", ["secret-only", "oidc+secret"])
def test_push_worker_matrix(config: str) -> None:
    """The worker service: health is open, a push runs only with the right credentials,
    a refused push runs nothing, and no answer quotes a credential back."""
    from tests.unit.worker.test_push_auth import (
        AUDIENCE,
        INVOKER,
        CertsServer,
        _rsa_pem,
        make_token,
    )
    from zpe_client.models import TaskState
    from zpe_worker.app import create_app as create_worker_app

    good, other = _rsa_pem(), _rsa_pem()
    certs = CertsServer()
    certs.keys = {"kid-1": good[1]}
    options: dict[str, Any] = {
        "store_url": "memory://",
        "default_engine": "mock",
        "push_shared_secret": SecretStr(PUSH_SECRET),
        "tasks_emulator_host": "127.0.0.1:8123",  # the secret is for the local emulator only
        "oidc_certs_url": certs.url,
    }
    if config == "oidc+secret":
        options |= {"worker_audience": AUDIENCE, "tasks_invoker_email": INVOKER}
    settings = Settings(**options)
    api_key = "zpe_key_0123456789abcdef_" + "k" * 43  # a control-plane credential
    headers: dict[str, dict[str, str]] = {
        "anonymous": {},
        "wrong_secret": {"X-ZPE-Push-Secret": PUSH_SECRET[:-1] + "x"},
        "api_bearer": bearer(api_key),
        "forged_oidc": bearer(make_token(other[0])),
        "remote_secret": {"X-ZPE-Push-Secret": PUSH_SECRET},
        "secret": {"X-ZPE-Push-Secret": PUSH_SECRET},
        "oidc": bearer(make_token(good[0])),
    }
    app = create_worker_app(settings)
    assert app_routes(app) == set(PUSH_EXPECTED), "worker routes without a matrix row"
    try:
        with (
            TestClient(app, client=("127.0.0.1", 50000)) as client,
            TestClient(app, client=("203.0.113.9", 40000)) as remote,
        ):
            service = app.state.service
            text = (SAMPLES / "h2_zpe.in").read_text()
            job, _ = service.submit(
                JobRequest(input_text=text, engine="mock", symmetry="off"), owner="alice"
            )
            task_ids = iter(ref.task_id for ref in job.tasks)
            for (method, path), by_config in PUSH_EXPECTED.items():
                expected = by_config[config]
                for principal in PUSH_PRINCIPALS:
                    task_id = next(task_ids) if method == "POST" else ""
                    body = {"task_id": task_id} if method == "POST" else None
                    caller = remote if principal.startswith("remote") else client
                    response = caller.request(method, path, json=body, headers=headers[principal])
                    where = (config, path, principal, response.text)
                    assert response.status_code == expected[principal], where
                    for credential in (PUSH_SECRET, api_key, *headers["oidc"].values()):
                        assert credential.removeprefix("Bearer ") not in response.text, where
                    if method != "POST":
                        continue
                    task = service.store.get_task(task_id).value
                    if expected[principal] == 200:
                        assert response.json()["outcome"] == "committed", where
                        assert task.state is TaskState.DONE
                    else:  # refused: nothing ran
                        assert (task.state, task.attempts) == (TaskState.QUEUED, 0), where
    finally:
        certs.close()
