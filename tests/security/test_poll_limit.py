"""Attacks on the polling limit: read where it does not look, or hide behind the proxy.

Before the fix the token bucket guarded ``GET /calc/zpe/jobs/{id}`` only: the
task states (a read of every task), results, files, the job list, the parse
preview (a full input parse) and the config were free to hammer. And it was
keyed by the TCP peer: behind Cloud Run's front end every anonymous caller is
the same peer, so one poller exhausted everyone's budget, while trusting
``X-Forwarded-For`` blindly would let a caller pick a fresh key per request.
Now every read route shares the caller's bucket, authenticated callers are
keyed by owner, and the anonymous ones by the rightmost ``X-Forwarded-For``
address not written by a proxy in ``ZPE_TRUSTED_PROXIES``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.api.conftest import make_settings
from tests.api.test_users_access import ADMIN, bearer, issue
from zpe_api.main import create_app
from zpe_core.errors import ConfigurationError

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
BURST = 2
H2 = {"input_text": (SAMPLES / "h2_zpe.in").read_text(), "engine": "mock"}

Call = Callable[[TestClient, str, dict[str, str]], httpx.Response]
#: Every read route of the user API, called on the caller's own job.
READS: dict[str, Call] = {
    "status": lambda c, job, h: c.get(f"/calc/zpe/jobs/{job}", headers=h),
    "tasks": lambda c, job, h: c.get(f"/calc/zpe/jobs/{job}/tasks", headers=h),
    "result": lambda c, job, h: c.get(f"/calc/zpe/jobs/{job}/result", headers=h),
    "files": lambda c, job, h: c.get(f"/calc/zpe/jobs/{job}/files?kind=freqs", headers=h),
    "list": lambda c, job, h: c.get("/calc/zpe/jobs", headers=h),
    "parse": lambda c, job, h: c.post("/calc/zpe/parse", json=H2, headers=h),
    "config": lambda c, job, h: c.get("/calc/zpe/config", headers=h),
}


def _limited(**overrides: Any) -> Any:
    base: dict[str, Any] = {
        "execution_mode": "http-pull",
        "poll_rate_per_second": 0.01,  # no refill during the test
        "poll_burst": BURST,
    }
    return make_settings(**(base | overrides))


def _assert_limited(answer: httpx.Response, where: object) -> None:
    assert answer.status_code == 429, (where, answer.text)
    assert answer.json()["code"] == "poll_rate_limited"
    assert int(answer.headers["Retry-After"]) >= 1


@pytest.mark.parametrize("route", sorted(READS))
def test_every_read_route_is_limited(route: str) -> None:
    settings = _limited(auth_mode="api-keys", admin_token=SecretStr(ADMIN))
    with TestClient(create_app(settings)) as client:
        alice = bearer(issue(client, "alice")["key"])
        created = client.post("/calc/zpe/jobs", json=H2, headers=alice)  # writes: not limited
        assert created.status_code == 201, created.text
        job = created.json()["job_id"]
        for _ in range(BURST):
            assert READS[route](client, job, alice).status_code != 429
        _assert_limited(READS[route](client, job, alice), route)
        # One bucket per caller for all reads: the others are spent too...
        for other in READS:
            _assert_limited(READS[other](client, job, alice), other)
        # ... and only this caller's: another owner reads on.
        bob = bearer(issue(client, "bob")["key"])
        assert client.get("/calc/zpe/jobs", headers=bob).status_code == 200


def test_an_owner_is_one_bucket_from_any_address() -> None:
    settings = _limited(auth_mode="api-keys", admin_token=SecretStr(ADMIN))
    app = create_app(settings)
    with TestClient(app) as first, TestClient(app, client=("198.51.100.7", 1)) as second:
        alice = bearer(issue(first, "alice")["key"])
        for _ in range(BURST):
            assert first.get("/calc/zpe/jobs", headers=alice).status_code == 200
        _assert_limited(second.get("/calc/zpe/jobs", headers=alice), "from a second address")


def test_anonymous_callers_behind_a_trusted_proxy_are_told_apart() -> None:
    app = create_app(_limited(trusted_proxies="10.0.0.0/8"))
    with (
        TestClient(app, client=("10.1.2.3", 5000)) as proxy,
        TestClient(app, client=("203.0.113.5", 5000)) as direct,
    ):

        def read(client: TestClient, forwarded: str | None) -> httpx.Response:
            headers = {"X-Forwarded-For": forwarded} if forwarded else {}
            return client.get("/calc/zpe/jobs", headers=headers)

        for _ in range(BURST):
            assert read(proxy, "198.51.100.1").status_code == 200
        _assert_limited(read(proxy, "198.51.100.1"), "the poller")
        # Another client behind the same proxy has a budget of its own.
        assert read(proxy, "198.51.100.2").status_code == 200
        # The poller cannot escape by writing its own entries in front ...
        _assert_limited(read(proxy, "203.0.113.66, 198.51.100.1"), "a prepended entry")
        # ... and a chain of trusted proxies still names it.
        _assert_limited(read(proxy, "198.51.100.1, 10.9.9.9"), "two proxies")
        # A caller that is not a proxy is its own address, whatever it forwards.
        for i in range(BURST):
            assert read(direct, f"192.0.2.{i}").status_code == 200
        _assert_limited(read(direct, "192.0.2.99"), "a spoofed X-Forwarded-For")


def test_any_peer_is_the_proxy_on_cloud_run() -> None:
    """``*``: the container is reached only through the platform's front end."""
    app = create_app(_limited(trusted_proxies="*"))
    with TestClient(app, client=("169.254.1.1", 5000)) as front_end:
        for _ in range(BURST):
            answer = front_end.get("/calc/zpe/jobs", headers={"X-Forwarded-For": "a, 198.51.100.1"})
            assert answer.status_code == 200
        answer = front_end.get("/calc/zpe/jobs", headers={"X-Forwarded-For": "b, 198.51.100.1"})
        _assert_limited(answer, "the same client")
        other = front_end.get("/calc/zpe/jobs", headers={"X-Forwarded-For": "198.51.100.2"})
        assert other.status_code == 200


def test_malformed_trusted_proxies_refused_at_start() -> None:
    with pytest.raises(ConfigurationError, match="ZPE_TRUSTED_PROXIES"):
        create_app(_limited(trusted_proxies="10.0.0.0/8, proxy.internal"))
