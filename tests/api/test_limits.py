"""Limits: jobs in flight per user and polling rate per client (429 + Retry-After),
plus the request-body, input-size and mobile-atom caps."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.api.conftest import SAMPLES, make_settings
from tests.api.test_jobs_api import assert_problem, submit
from tests.api.test_users_access import ADMIN, bearer, issue
from zpe_api.main import create_app
from zpe_core.control.limits import TokenBucketLimiter
from zpe_core.errors import TooManyRequests


def test_jobs_in_flight_per_owner(h2_input: str) -> None:
    h2o_input = (SAMPLES / "h2o_zpe.in").read_text()
    settings = make_settings(
        execution_mode="http-pull",  # no workers: jobs stay queued
        auth_mode="api-keys",
        admin_token=SecretStr(ADMIN),
        max_active_jobs_per_owner=2,
        active_jobs_retry_after_seconds=7,
    )
    with TestClient(create_app(settings)) as client:
        alice = bearer(issue(client, "alice")["key"])
        bob = bearer(issue(client, "bob")["key"])
        first = submit(client, h2_input, headers=alice).json()["job_id"]
        assert submit(client, h2o_input, headers=alice).status_code == 201
        over = submit(client, h2_input, headers=alice, delta=0.02)
        body = assert_problem(over, 429, "too_many_active_jobs")
        assert over.headers["Retry-After"] == "7"
        assert "2 jobs" in body["detail"]
        assert submit(client, h2_input, headers=bob).status_code == 201  # per owner
        assert client.post(f"/calc/zpe/jobs/{first}/cancel", headers=alice).status_code == 200
        assert submit(client, h2_input, headers=alice, delta=0.02).status_code == 201


def test_polling_rate_per_owner(h2_input: str) -> None:
    settings = make_settings(
        execution_mode="http-pull",
        auth_mode="api-keys",
        admin_token=SecretStr(ADMIN),
        poll_rate_per_second=0.5,
        poll_burst=3,
    )
    with TestClient(create_app(settings)) as client:
        alice = bearer(issue(client, "alice")["key"])
        bob = bearer(issue(client, "bob")["key"])
        job_id = submit(client, h2_input, headers=alice).json()["job_id"]
        url = f"/calc/zpe/jobs/{job_id}"
        for _ in range(3):
            assert client.get(url, headers=alice).status_code == 200
        limited = client.get(url, headers=alice)
        assert_problem(limited, 429, "poll_rate_limited")
        assert int(limited.headers["Retry-After"]) >= 1
        # Another owner has a bucket of its own; every read route shares the owner's one
        # (tests/security/test_poll_limit.py goes through each), submissions do not.
        assert_problem(client.get(url, headers=bob), 404, "not_found")
        assert_problem(client.get("/calc/zpe/jobs", headers=alice), 429, "poll_rate_limited")
        assert submit(client, h2_input, headers=alice, delta=0.02).status_code == 201


def test_default_poll_limit_lets_a_fast_poller_through(client: TestClient, h2_input: str) -> None:
    job_id = submit(client, h2_input).json()["job_id"]
    codes = {client.get(f"/calc/zpe/jobs/{job_id}").status_code for _ in range(150)}
    assert codes == {200}


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucketLimiter(rate=2.0, burst=2)
    assert bucket.acquire("k", at=100.0) == 0.0
    assert bucket.acquire("k", at=100.0) == 0.0
    assert bucket.acquire("k", at=100.0) == 0.5  # one token is 0.5 s away
    assert bucket.acquire("k", at=100.6) == 0.0
    assert bucket.acquire("other", at=100.6) == 0.0
    assert TokenBucketLimiter(rate=0.0, burst=1).acquire("k") == 0.0  # 0: unlimited
    tiny = TokenBucketLimiter(rate=1.0, burst=1, max_keys=3)
    for i in range(10):
        tiny.acquire(f"k{i}")
    assert len(tiny._buckets) == 3  # bounded memory
    limiter = TokenBucketLimiter(rate=0.1, burst=1)
    limiter.check("x")
    with pytest.raises(TooManyRequests) as info:
        limiter.check("x")
    assert info.value.retry_after == 10 and info.value.code == "poll_rate_limited"


def test_size_caps(h2_input: str) -> None:
    settings = make_settings(max_input_bytes=2048, max_mobile_atoms=1, execution_mode="http-pull")
    with TestClient(create_app(settings)) as client:
        padding = "\n! padding" * 300
        assert_problem(submit(client, h2_input + padding), 413, "input_too_large")
        huge = client.post(
            "/calc/zpe/jobs",
            content=b'{"input_text": "' + b"x" * 200_000 + b'"}',
            headers={"Content-Type": "application/json"},
        )
        assert_problem(huge, 413, "request_too_large")
        assert_problem(submit(client, h2_input), 422, "too_many_mobile")
        assert submit(client, h2_input, mobile=[0]).status_code == 201
        store = client.app.state.store  # type: ignore[attr-defined]
        assert len(store.all_job_ids()) == 1  # the refused ones stored nothing
