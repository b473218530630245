"""Attack: DNS rebinding against the unauthenticated local API.

With ``ZPE_AUTH_MODE=none`` anyone who reaches the API is its user. A web page
on ``rebind.attacker.example`` whose name then resolves to 127.0.0.1 can make
the victim's browser call the local API as "same origin" and read or cancel
every job. Such requests carry the attacker's name in ``Host``: before the fix
they were served, now they are answered 421 ``host_not_allowed``.
"""

from __future__ import annotations

import socket

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import make_settings
from tests.security._edge import LocalApi, read_response
from tests.security._edge import local_api as local_api  # a fixture
from zpe_api.main import create_app

REBIND = ("rebind.attacker.example", "rebind.attacker.example:8000", "127.0.0.1.nip.io:8000")
LOCAL = ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "127.0.0.2", "LOCALHOST")


def _get(client: TestClient, path: str, host: str) -> httpx.Response:
    return client.get(path, headers={"Host": host})


def test_rebinding_hosts_are_refused_without_authentication() -> None:
    with TestClient(create_app(make_settings(execution_mode="http-pull"))) as client:
        for host in REBIND:
            for path in ("/calc/zpe/jobs", "/", "/readyz", "/metrics", "/openapi.json"):
                answer = _get(client, path, host)
                assert answer.status_code == 421, (host, path, answer.text)
                assert answer.json()["code"] == "host_not_allowed"
            submit = client.post("/calc/zpe/jobs", json={"input_text": "x"}, headers={"Host": host})
            assert submit.status_code == 421
        for host in LOCAL:
            assert _get(client, "/calc/zpe/jobs", host).status_code == 200, host
        # TestClient's own host is the address the app "listens on" (ASGI scope server).
        assert client.get("/calc/zpe/jobs").status_code == 200


@pytest.mark.parametrize("allowed", ["zpe.lab.example", "other.example, zpe.lab.example:8000"])
def test_allowed_hosts_add_names(allowed: str) -> None:
    settings = make_settings(execution_mode="http-pull", allowed_hosts=allowed)
    with TestClient(create_app(settings)) as client:
        assert _get(client, "/calc/zpe/jobs", "zpe.lab.example:8000").status_code == 200
        assert _get(client, "/calc/zpe/jobs", "ZPE.lab.example").status_code == 200
        assert _get(client, "/calc/zpe/jobs", "rebind.attacker.example").status_code == 421
    anything = make_settings(execution_mode="http-pull", allowed_hosts="*")
    with TestClient(create_app(anything)) as client:
        assert _get(client, "/calc/zpe/jobs", "rebind.attacker.example").status_code == 200


def test_no_host_check_with_api_keys() -> None:
    """With API keys a rebinding page gains nothing (the browser holds no key): no check."""
    settings = make_settings(execution_mode="http-pull", auth_mode="api-keys")
    with TestClient(create_app(settings)) as client:
        answer = _get(client, "/calc/zpe/jobs", "zpe.example.org")
        assert answer.status_code == 401 and answer.json()["code"] == "authentication_required"


def test_real_server_refuses_a_rebinding_host(local_api: LocalApi) -> None:
    url = f"{local_api.url}/calc/zpe/jobs"
    answer = httpx.get(url, headers={"Host": f"rebind.attacker.example:{local_api.port}"})
    assert answer.status_code == 421 and answer.json()["code"] == "host_not_allowed"
    for host in (f"localhost:{local_api.port}", f"127.0.0.1:{local_api.port}", "zpe.lab.example"):
        assert httpx.get(url, headers={"Host": host}).status_code == 200, host
    # HTTP/1.0 without any Host: refused too.
    with socket.create_connection(("127.0.0.1", local_api.port), timeout=30) as sock:
        sock.sendall(b"GET /calc/zpe/jobs HTTP/1.0\r\n\r\n")
        status, _, body = read_response(sock)
    assert status == 421, body
