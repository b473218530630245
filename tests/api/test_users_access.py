"""Users and access: API keys (issued, listed, revoked by an admin, stored hashed),
the trusted identity header, anonymous access by mode, and owner isolation (404)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.api.conftest import make_settings, wait_for
from tests.api.test_jobs_api import assert_problem, submit
from zpe_api.main import create_app
from zpe_core.physics.plan import new_job_id

ADMIN = "admin-token-for-tests-0123456789"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def issue(client: TestClient, owner: str, label: str | None = None) -> dict[str, Any]:
    response = client.post(
        "/calc/zpe/admin/api-keys", json={"owner": owner, "label": label}, headers=ADMIN_HEADERS
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def keyed_client() -> Iterator[TestClient]:
    """API keys required; mock engine with thread workers (jobs finish)."""
    settings = make_settings(auth_mode="api-keys", admin_token=SecretStr(ADMIN))
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def keyed_idle_client() -> Iterator[TestClient]:
    """API keys required; no workers (jobs stay queued)."""
    settings = make_settings(
        auth_mode="api-keys", admin_token=SecretStr(ADMIN), execution_mode="http-pull"
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_admin_issues_lists_and_revokes_keys_stored_hashed(
    keyed_client: TestClient, h2_input: str
) -> None:
    url = "/calc/zpe/admin/api-keys"
    assert_problem(keyed_client.post(url, json={"owner": "alice"}), 401, "admin_token_required")
    assert_problem(
        keyed_client.post(url, json={"owner": "alice"}, headers=bearer("wrong-admin-token")),
        401,
        "invalid_token",
    )
    assert_problem(
        keyed_client.post(url, json={"owner": "no spaces"}, headers=ADMIN_HEADERS),
        422,
        "invalid_request",
    )
    issued = issue(keyed_client, "alice", "laptop")
    key = issued["key"]
    assert key.startswith("zpe_key_") and len(key) > 50
    assert issued["owner"] == "alice" and issued["label"] == "laptop"

    listed = keyed_client.get(url, headers=ADMIN_HEADERS)
    assert listed.status_code == 200
    [view] = listed.json()["api_keys"]
    assert view["key_id"] == issued["key_id"] and "key" not in view and "digest" not in view
    assert key not in listed.text
    store = keyed_client.app.state.store  # type: ignore[attr-defined]
    raw = store._read(f"meta/api-keys/{issued['key_id']}")[0].decode()
    assert key not in raw and issued["key_id"] in raw

    created = submit(keyed_client, h2_input, headers=bearer(key))
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    job_raw = store._read(f"jobs/{job_id}")[0].decode()
    assert key not in job_raw and '"owner":"alice"' in job_raw

    revoked = keyed_client.delete(f"{url}/{issued['key_id']}", headers=ADMIN_HEADERS)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    # Revoked at once: the very next request is refused.
    assert_problem(
        keyed_client.get(f"/calc/zpe/jobs/{job_id}", headers=bearer(key)), 401, "api_key_revoked"
    )
    again = keyed_client.delete(f"{url}/{issued['key_id']}", headers=ADMIN_HEADERS)
    assert again.status_code == 200  # idempotent
    assert_problem(
        keyed_client.delete(f"{url}/0123456789abcdef", headers=ADMIN_HEADERS), 404, "not_found"
    )


def test_credentials_required_in_api_keys_mode(keyed_client: TestClient, h2_input: str) -> None:
    response = submit(keyed_client, h2_input)
    assert_problem(response, 401, "authentication_required")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(keyed_client.get("/calc/zpe/jobs"), 401, "authentication_required")
    forged = "zpe_key_0123456789abcdef_" + "x" * 43
    assert_problem(
        keyed_client.get("/calc/zpe/jobs", headers=bearer(forged)), 401, "invalid_api_key"
    )
    assert_problem(
        keyed_client.get("/calc/zpe/jobs", headers=bearer(ADMIN)), 401, "invalid_api_key"
    )
    assert_problem(
        keyed_client.get("/calc/zpe/jobs", headers={"Authorization": "Basic YTpi"}),
        401,
        "invalid_api_key",
    )
    # An identity header is ignored unless one is configured.
    headers = {"X-Goog-Authenticated-User-Email": "accounts.google.com:alice@example.org"}
    assert_problem(
        keyed_client.get("/calc/zpe/jobs", headers=headers), 401, "authentication_required"
    )
    # Public endpoints stay public.
    assert keyed_client.get("/healthz").status_code == 200
    assert keyed_client.get("/metrics").status_code == 200


def test_another_users_job_answers_404_as_if_absent(
    keyed_client: TestClient, h2_input: str
) -> None:
    alice = bearer(issue(keyed_client, "alice")["key"])
    bob = bearer(issue(keyed_client, "bob")["key"])
    job_id = submit(keyed_client, h2_input, headers=alice).json()["job_id"]
    assert wait_for_owner(keyed_client, job_id, alice)["state"] == "done"
    absent = new_job_id()
    base = f"/calc/zpe/jobs/{job_id}"
    for method, path in [
        ("GET", ""),
        ("GET", "/tasks"),
        ("GET", "/result"),
        ("GET", "/files?kind=summary"),
        ("GET", "/files?kind=freqs"),
        ("POST", "/cancel"),
    ]:
        assert keyed_client.request(method, base + path, headers=alice).status_code in (200, 409)
        theirs = keyed_client.request(method, base + path, headers=bob)
        missing = keyed_client.request(method, f"/calc/zpe/jobs/{absent}{path}", headers=bob)
        assert_problem(theirs, 404, "not_found")
        assert_problem(missing, 404, "not_found")
        # Indistinguishable from an absent job but for the id itself.
        assert theirs.json()["detail"].replace(job_id, "X") == missing.json()["detail"].replace(
            absent, "X"
        )
    assert [
        j["job_id"] for j in keyed_client.get("/calc/zpe/jobs", headers=alice).json()["jobs"]
    ] == [job_id]
    assert keyed_client.get("/calc/zpe/jobs", headers=bob).json()["jobs"] == []


def test_another_user_cannot_cancel_a_running_job(
    keyed_idle_client: TestClient, h2_input: str
) -> None:
    alice = bearer(issue(keyed_idle_client, "alice")["key"])
    bob = bearer(issue(keyed_idle_client, "bob")["key"])
    job_id = submit(keyed_idle_client, h2_input, headers=alice).json()["job_id"]
    assert_problem(
        keyed_idle_client.post(f"/calc/zpe/jobs/{job_id}/cancel", headers=bob), 404, "not_found"
    )
    status = keyed_idle_client.get(f"/calc/zpe/jobs/{job_id}", headers=alice).json()
    assert status["state"] == "queued"
    # Idempotency keys are per owner: bob's identical key makes bob's own job.
    first = submit(keyed_idle_client, h2_input, headers={**alice, "Idempotency-Key": "k1"})
    other = submit(keyed_idle_client, h2_input, headers={**bob, "Idempotency-Key": "k1"})
    assert first.status_code == other.status_code == 201
    assert first.json()["job_id"] != other.json()["job_id"]


# The identity-aware proxy mode (ZPE_TRUSTED_IDENTITY_HEADER): identities come from IAP's
# signed assertion, never from the plain header; see tests/security/test_iap_identity.py.


def test_none_mode_is_anonymous_but_honours_a_key(h2_input: str) -> None:
    settings_admin = make_settings(admin_token=SecretStr(ADMIN), execution_mode="http-pull")
    with TestClient(create_app(settings_admin)) as none_client:
        anonymous_job = submit(none_client, h2_input).json()["job_id"]
        key = bearer(issue(none_client, "carol")["key"])
        carols_job = submit(none_client, h2_input, headers=key).json()["job_id"]
        assert none_client.get(f"/calc/zpe/jobs/{anonymous_job}").status_code == 200
        assert_problem(none_client.get(f"/calc/zpe/jobs/{carols_job}"), 404, "not_found")
        assert none_client.get(f"/calc/zpe/jobs/{carols_job}", headers=key).status_code == 200
        bogus = bearer("zpe_key_0123456789abcdef_" + "y" * 43)
        assert_problem(none_client.get("/calc/zpe/jobs", headers=bogus), 401, "invalid_api_key")


def test_job_ids_are_unguessable() -> None:
    ids = {new_job_id() for _ in range(2000)}
    assert len(ids) == 2000
    for job_id in list(ids)[:50]:
        assert job_id.startswith("j") and len(job_id) == 33
        int(job_id[1:], 16)  # 32 hex digits: 128 random bits


def wait_for_owner(client: TestClient, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    """``wait_for`` with credentials."""
    original = client.headers.copy()
    client.headers.update(headers)
    try:
        return wait_for(client, job_id)
    finally:
        client.headers = original


def test_cli_sends_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from zpe_client.cli import _client, build_parser

    monkeypatch.delenv("ZPE_API_KEY", raising=False)
    plain = _client(build_parser().parse_args(["status", "j1"]))
    assert "Authorization" not in plain.headers()
    flag = _client(build_parser().parse_args(["--api-key", "zpe_key_abc", "status", "j1"]))
    assert flag.headers()["Authorization"] == "Bearer zpe_key_abc"
    monkeypatch.setenv("ZPE_API_KEY", "zpe_key_env")
    env = _client(build_parser().parse_args(["status", "j1"]))
    assert env.headers()["Authorization"] == "Bearer zpe_key_env"
