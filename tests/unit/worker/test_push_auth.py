"""OIDC verification of push requests with real JWTs, signed by a local RSA key.

A local HTTP server plays Google's certificate endpoint (``{kid: PEM}``), and
the tokens are signed with ``google.auth.crypt``/``google.auth.jwt``, so
google-auth's real verification code runs end to end. The worker app is then
checked to refuse, and run nothing, without valid credentials.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from google.auth import crypt, jwt
from pydantic import SecretStr

from zpe_client.models import JobRequest, TaskState
from zpe_core.errors import ConfigurationError, PushAuthError
from zpe_core.settings import Settings
from zpe_worker.app import create_app
from zpe_worker.auth import PushAuthenticator

AUDIENCE = "https://zpe-worker-abc.a.run.app"
INVOKER = "zpe-tasks@proj.iam.gserviceaccount.com"
H2 = """&control
  calculation = 'scf'
/
&system
  ibrav = 0, nat = 2, ntyp = 1, ecutwfc = 30
/
&electrons
/
ATOMIC_SPECIES
H 1.008 H.pbe-rrkjus.UPF
CELL_PARAMETERS angstrom
10.0 0.0 0.0
0.0 10.0 0.0
0.0 0.0 10.0
ATOMIC_POSITIONS angstrom
H 0.0 0.0 0.0
H 0.0 0.0 0.74
K_POINTS gamma
"""


def _rsa_pem() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


class CertsServer:
    """Serves ``{kid: public PEM}`` like https://www.googleapis.com/oauth2/v1/certs."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                body = json.dumps(owner.keys).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/oauth2/v1/certs"
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[str, str]]:
    return {"good": _rsa_pem(), "other": _rsa_pem()}


@pytest.fixture
def certs(keys: dict[str, tuple[str, str]]) -> Iterator[CertsServer]:
    server = CertsServer()
    server.keys = {"kid-1": keys["good"][1]}
    yield server
    server.close()


def _settings(certs_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "store_url": "memory://",
        "default_engine": "mock",
        "worker_audience": AUDIENCE,
        "tasks_invoker_email": INVOKER,
        "oidc_certs_url": certs_url,
    }
    return Settings(**(base | overrides))


def make_token(private_pem: str, kid: str = "kid-1", **claims: Any) -> str:
    t = int(time.time())
    payload = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "azp": "1234567890",
        "sub": "1234567890",
        "email": INVOKER,
        "email_verified": True,
        "iat": t,
        "exp": t + 3600,
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    signer = crypt.RSASigner.from_string(private_pem, key_id=kid)
    return jwt.encode(signer, payload).decode()


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_valid_token_is_accepted_and_certs_are_cached(
    certs: CertsServer, keys: dict[str, tuple[str, str]]
) -> None:
    auth = PushAuthenticator(_settings(certs.url))
    token = make_token(keys["good"][0])
    assert auth.authenticate(_bearer(token)) == INVOKER
    assert auth.authenticate(_bearer(make_token(keys["good"][0], sub="2"))) == INVOKER
    assert certs.hits == 1


class _Now:
    """A time claim ``offset`` seconds from when the test runs (``NOW + 600``)."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset

    def __add__(self, seconds: int) -> _Now:
        return _Now(self.offset + seconds)

    def __sub__(self, seconds: int) -> _Now:
        return _Now(self.offset - seconds)


NOW = _Now()


@pytest.mark.parametrize(
    ("claims", "status", "code"),
    [
        ({"aud": "https://someone-else.a.run.app"}, 401, "invalid_token"),
        ({"email": "intruder@proj.iam.gserviceaccount.com"}, 403, "forbidden_caller"),
        ({"email": None}, 403, "forbidden_caller"),
        ({"email_verified": False}, 403, "forbidden_caller"),
        ({"email_verified": None}, 403, "forbidden_caller"),
        ({"iss": "https://evil.example.com"}, 401, "invalid_token"),
        # Times as offsets from the moment the test runs (not from collection, which in a
        # long session can be many minutes earlier).
        ({"iat": NOW - 7200, "exp": NOW - 60}, 401, "invalid_token"),
        ({"iat": NOW + 600, "exp": NOW + 4200}, 401, "invalid_token"),
    ],
    ids=[
        "wrong-audience",
        "wrong-email",
        "no-email",
        "unverified-email",
        "no-email-verified",
        "wrong-issuer",
        "expired",
        "issued-in-future",
    ],
)
def test_bad_claims_are_refused(
    certs: CertsServer,
    keys: dict[str, tuple[str, str]],
    claims: dict[str, Any],
    status: int,
    code: str,
) -> None:
    auth = PushAuthenticator(_settings(certs.url))
    t = int(time.time())
    claims = {k: t + v.offset if isinstance(v, _Now) else v for k, v in claims.items()}
    with pytest.raises(PushAuthError) as info:
        auth.authenticate(_bearer(make_token(keys["good"][0], **claims)))
    assert (info.value.status, info.value.code) == (status, code)


def test_small_clock_skew_is_tolerated(
    certs: CertsServer, keys: dict[str, tuple[str, str]]
) -> None:
    auth = PushAuthenticator(_settings(certs.url))
    t = int(time.time())
    assert auth.authenticate(_bearer(make_token(keys["good"][0], iat=t - 3600, exp=t - 3)))
    assert auth.authenticate(_bearer(make_token(keys["good"][0], iat=t + 3, exp=t + 3600)))


def test_bad_signature_is_refused(certs: CertsServer, keys: dict[str, tuple[str, str]]) -> None:
    auth = PushAuthenticator(_settings(certs.url))
    forged = make_token(keys["other"][0])  # same kid, another key
    with pytest.raises(PushAuthError) as info:
        auth.authenticate(_bearer(forged))
    assert info.value.status == 401
    header, _payload, signature = make_token(keys["good"][0]).split(".")
    # A valid payload (only ``sub`` changed) under the good token's signature.
    claims = {**jwt.decode(make_token(keys["good"][0]), verify=False), "sub": "someone"}
    tampered_payload = jwt._helpers.unpadded_urlsafe_b64encode(  # type: ignore[attr-defined]
        json.dumps(claims).encode()
    ).decode()
    with pytest.raises(PushAuthError) as info:
        auth.authenticate(_bearer(f"{header}.{tampered_payload}.{signature}"))
    assert (info.value.status, info.value.code) == (401, "invalid_token")
    with pytest.raises(PushAuthError):
        auth.authenticate(_bearer("not-a-jwt"))


def test_rotated_key_is_fetched_once(certs: CertsServer, keys: dict[str, tuple[str, str]]) -> None:
    auth = PushAuthenticator(_settings(certs.url))
    assert auth.authenticate(_bearer(make_token(keys["good"][0])))
    certs.keys["kid-2"] = keys["other"][1]  # Google rotates: a new key appears
    assert auth.authenticate(_bearer(make_token(keys["other"][0], kid="kid-2"))) == INVOKER
    assert certs.hits == 2
    with pytest.raises(PushAuthError):  # unknown kids do not refetch again at once
        auth.authenticate(_bearer(make_token(keys["other"][0], kid="kid-3")))
    assert certs.hits == 2


def test_shared_secret_only_when_configured(certs: CertsServer) -> None:
    oidc_only = PushAuthenticator(_settings(certs.url))
    with pytest.raises(PushAuthError) as info:
        oidc_only.authenticate({"x-zpe-push-secret": "anything-at-all-long"})
    assert info.value.status == 401
    secret = "s3cret-value-for-tests"
    both = PushAuthenticator(
        _settings(
            certs.url, push_shared_secret=SecretStr(secret), tasks_emulator_host="127.0.0.1:8123"
        )
    )
    assert both.authenticate({"x-zpe-push-secret": secret}, "127.0.0.1") == "shared-secret"
    for wrong in ("", "s3cret-value-for-test", secret + "x"):
        with pytest.raises(PushAuthError):
            both.authenticate({"x-zpe-push-secret": wrong}, "127.0.0.1")
    with pytest.raises(PushAuthError):
        both.authenticate({})


def test_worker_refuses_to_start_without_any_authentication() -> None:
    with pytest.raises(ConfigurationError, match="ZPE_PUSH_SHARED_SECRET"):
        PushAuthenticator(Settings(store_url="memory://"))
    with pytest.raises(ConfigurationError, match="at least 16"):
        PushAuthenticator(
            Settings(
                store_url="memory://",
                push_shared_secret=SecretStr("short"),
                tasks_emulator_host="127.0.0.1:8123",
            )
        )


def test_unauthenticated_push_runs_nothing(
    certs: CertsServer, keys: dict[str, tuple[str, str]]
) -> None:
    app = create_app(_settings(certs.url))
    with TestClient(app) as client:
        service = app.state.service
        job, _ = service.submit(JobRequest(input_text=H2, engine="mock"), owner="alice")
        task_id = job.tasks[0].task_id
        forged = make_token(keys["other"][0])
        intruder = make_token(keys["good"][0], email="intruder@example.com")
        for headers, status in (
            ({}, 401),
            (_bearer(forged), 401),
            (_bearer(intruder), 403),
            ({"x-zpe-push-secret": "guess-guess-guess-guess"}, 401),
        ):
            response = client.post(
                "/internal/tasks/run", json={"task_id": task_id}, headers=headers
            )
            assert response.status_code == status, response.text
        task = service.store.get_task(task_id).value
        assert (task.state, task.attempts, task.history) == (TaskState.QUEUED, 0, [])
        ok = client.post(
            "/internal/tasks/run",
            json={"task_id": task_id},
            headers=_bearer(make_token(keys["good"][0])),
        )
        assert ok.status_code == 200 and ok.json()["outcome"] == "committed"
        assert service.store.get_task(task_id).value.state is TaskState.DONE
        assert client.get("/docs").status_code == 404  # no user surface on the worker
        assert client.post("/calc/zpe/jobs", json={}).status_code == 404
