"""Attack: a request body without Content-Length (chunked) larger than any cap.

Before the fix the API read such a body whole, before any route or credential
check ran: 16 MiB from an anonymous caller were held in memory and only then
answered 401. Now ``BodyLimit`` cuts the stream at the cap: 413
``request_too_large`` (``result_too_large`` on the worker's result route, whose
cap is ``ZPE_MAX_RESULT_BYTES``), the rest of the body is never read, no handler
runs. The same holds for the push worker service.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from bench.common import status_kib
from tests.api.conftest import make_settings
from tests.api.test_access_matrix import ADMIN_HEADERS, bearer, enroll, lease, matrix_settings
from tests.security._edge import LocalApi, send_chunked
from tests.security._edge import local_api as local_api  # a fixture
from zpe_api.main import create_app
from zpe_client.models import JobRequest
from zpe_worker.app import create_app as create_worker_app

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
CHUNK = 64 * 1024
ATTACK = 16 * 1024 * 1024  # what the attacker is willing to send


class Stream:
    """A chunked request body that counts how much of it the server pulled."""

    def __init__(self, total: int = ATTACK) -> None:
        self.total = total
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.total:
            self.pulled += CHUNK
            yield b"x" * CHUNK


async def _post(
    app: Any, path: str, stream: Stream, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, int]:
    """POST ``stream`` through the app in-process; the response and the peak memory."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        tracemalloc.start()
        try:
            response = await client.post(path, content=stream, headers=headers or {})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert "content-length" not in {k.lower() for k in response.request.headers}
    return response, peak


def _assert_413(response: httpx.Response, code: str, limit: int) -> dict[str, Any]:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["status"] == 413
    assert body["limit_bytes"] == limit and f"({limit} bytes)" in body["detail"]
    return body


def test_chunked_body_is_cut_at_the_cap_before_authentication() -> None:
    settings = make_settings(
        auth_mode="api-keys", execution_mode="http-pull", max_input_bytes=64 * 1024
    )
    cap = 64 * 1024 + 64 * 1024
    app = create_app(settings)

    async def attack() -> tuple[httpx.Response, int, int]:
        async with app.router.lifespan_context(app):
            stream = Stream()
            response, peak = await _post(app, "/calc/zpe/jobs", stream)
            return response, peak, stream.pulled

    response, peak, pulled = asyncio.run(attack())
    body = _assert_413(response, "request_too_large", cap)  # not 401: the cap comes first
    assert "128 KiB" in body["detail"]
    assert pulled <= cap + CHUNK, f"the server read {pulled} bytes of a {cap}-byte cap"
    assert peak < 4 * 1024 * 1024, f"{peak} bytes held for a {cap}-byte cap"


def test_chunked_body_within_the_cap_reaches_the_route() -> None:
    app = create_app(make_settings(execution_mode="http-pull"))
    text = (SAMPLES / "h2_zpe.in").read_text()

    async def submit() -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            raw = json.dumps({"input_text": text, "engine": "mock"}).encode()
            for i in range(0, len(raw), 100):
                yield raw[i : i + 100]

        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                return await c.post(
                    "/calc/zpe/jobs", content=body(), headers={"content-type": "application/json"}
                )

    response = asyncio.run(submit())
    assert response.status_code == 201, response.text


def test_worker_result_is_capped_before_it_is_parsed() -> None:
    from fastapi.testclient import TestClient

    app = create_app(matrix_settings(max_result_bytes=4096))
    with TestClient(app) as client:
        _, token = enroll(client, "w1")
        key = client.post(
            "/calc/zpe/admin/api-keys", json={"owner": "alice"}, headers=ADMIN_HEADERS
        ).json()["key"]
        body = {"input_text": (SAMPLES / "h2_zpe.in").read_text(), "engine": "mock"}
        assert client.post("/calc/zpe/jobs", json=body, headers=bearer(key)).is_success
        grant = lease(client, token)
        assert grant is not None
        path = f"/calc/zpe/compute/tasks/{grant['task_id']}/result"
        stream = Stream()
        response = client.portal.call(_post, app, path, stream, bearer(token))[0]  # type: ignore[union-attr]
        _assert_413(response, "result_too_large", 4096)
        assert stream.pulled <= 4096 + CHUNK
        task = app.state.store.get_task(grant["task_id"]).value
        assert task.state.value == "leased" and task.result is None


def test_push_worker_caps_chunked_bodies_before_authentication() -> None:
    from zpe_worker.app import MAX_BODY_BYTES

    secret = "push-secret-for-the-body-cap-0123"
    settings = make_settings(
        push_shared_secret=SecretStr(secret), tasks_emulator_host="127.0.0.1:8123"
    )
    app = create_worker_app(settings)

    async def attack(headers: dict[str, str]) -> tuple[httpx.Response, int]:
        async with app.router.lifespan_context(app):
            job, _ = app.state.service.submit(
                JobRequest(input_text=(SAMPLES / "h2_zpe.in").read_text(), engine="mock"),
                owner="alice",
            )
            stream = Stream()
            response, _ = await _post(app, "/internal/tasks/run", stream, headers)
            assert app.state.service.store.get_task(job.tasks[0].task_id).value.attempts == 0
            return response, stream.pulled

    for headers in ({}, {"X-ZPE-Push-Secret": secret}):
        response, pulled = asyncio.run(attack(headers))
        _assert_413(response, "request_too_large", MAX_BODY_BYTES)
        assert pulled <= MAX_BODY_BYTES + CHUNK


def test_real_api_process_answers_413_mid_stream(local_api: LocalApi) -> None:
    """uvicorn in its own process, a raw chunked upload of 16 MiB: the answer comes before
    the upload ends, the server's peak memory hardly moves, and it is fine afterwards."""
    url = f"{local_api.url}/calc/zpe/jobs"
    assert httpx.post(url, json={"input_text": "x"}).status_code == 422  # warm up
    before = status_kib(local_api.pid, "VmHWM")  # peak resident memory so far
    status, _, body, sent = send_chunked(
        local_api.port,
        "/calc/zpe/jobs",
        {"Content-Type": "application/json"},
        chunk=CHUNK,
        total=ATTACK,
    )
    grown = status_kib(local_api.pid, "VmHWM") - before
    assert status == 413, body
    assert json.loads(body)["code"] == "request_too_large"
    assert sent < ATTACK, "the whole body went in before an answer"
    assert grown < 8 * 1024, f"the server's peak memory grew by {grown} KiB"
    assert httpx.get(f"{local_api.url}/healthz").status_code == 200
    assert not list(local_api.store.glob("jobs/*"))  # nothing stored
