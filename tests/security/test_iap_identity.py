"""Attack: forge the identity header IAP would set, and act as the victim.

Before the fix, with ``ZPE_TRUSTED_IDENTITY_HEADER=X-Goog-Authenticated-User-Email``
anyone reaching the API could send ``X-Goog-Authenticated-User-Email: victim``
and read the victim's jobs. Now the identity is that of IAP's signed assertion
(``X-Goog-IAP-JWT-Assertion``, ES256), verified with google-auth against IAP's
keys (here a local certificates endpoint serving keys made in the test) for
``ZPE_IAP_AUDIENCE``; the plain header is never read, and the mode is refused at
start unless the deployment states a non-public ingress.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from google.auth import crypt, jwt
from google.auth.crypt import es256

from tests.api.conftest import make_settings
from tests.api.test_jobs_api import assert_problem
from tests.fixtures.servers import free_port
from tests.unit.worker.test_push_auth import CertsServer, _rsa_pem, make_token
from zpe_api.main import create_app
from zpe_core.errors import ConfigurationError

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
AUDIENCE = "/projects/123456789/global/backendServices/987654321"
HEADER = "X-Goog-Authenticated-User-Email"
ASSERTION = "X-Goog-IAP-JWT-Assertion"


def _es256_pem() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
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


def iap_token(private_pem: str, kid: str = "iap-1", **claims: Any) -> str:
    """An assertion as IAP signs it (ES256; iss https://cloud.google.com/iap)."""
    t = int(time.time())
    payload = {
        "iss": "https://cloud.google.com/iap",
        "aud": AUDIENCE,
        "sub": "accounts.google.com:1234567890",
        "email": "alice@example.org",
        "hd": "example.org",
        "iat": t,
        "exp": t + 600,
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    signer = es256.ES256Signer.from_string(private_pem, key_id=kid)
    return jwt.encode(signer, payload).decode()


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[str, str]]:
    return {"iap": _es256_pem(), "other": _es256_pem()}


@pytest.fixture
def certs(keys: dict[str, tuple[str, str]]) -> Iterator[CertsServer]:
    server = CertsServer()  # serves {kid: public PEM}, as IAP's public_key endpoint does
    server.keys = {"iap-1": keys["iap"][1]}
    yield server
    server.close()


def iap_settings(certs_url: str, **overrides: Any) -> Any:
    base: dict[str, Any] = {
        "auth_mode": "api-keys",
        "execution_mode": "http-pull",
        "trusted_identity_header": HEADER,
        "iap_audience": AUDIENCE,
        "iap_certs_url": certs_url,
        "ingress": "internal-and-cloud-load-balancing",
    }
    return make_settings(**(base | overrides))


def _submit(client: TestClient, headers: dict[str, str]) -> Any:
    body = {"input_text": (SAMPLES / "h2_zpe.in").read_text(), "engine": "mock"}
    return client.post("/calc/zpe/jobs", json=body, headers=headers)


def test_forged_identity_header_is_refused(
    certs: CertsServer, keys: dict[str, tuple[str, str]]
) -> None:
    victim = {HEADER: "accounts.google.com:victim@example.org"}
    with TestClient(create_app(iap_settings(certs.url))) as client:
        # The victim, through IAP, submits a job.
        job_id = _submit(client, {ASSERTION: iap_token(keys["iap"][0], email="victim@example.org")})
        assert job_id.status_code == 201, job_id.text
        job_url = f"/calc/zpe/jobs/{job_id.json()['job_id']}"
        # The attacker sends the plain header alone: 401, nothing read or stored.
        for method, url in (
            ("GET", job_url),
            ("GET", "/calc/zpe/jobs"),
            ("POST", "/calc/zpe/jobs"),
        ):
            answer = client.request(method, url, headers=victim, json={"input_text": "x"})
            assert_problem(answer, 401, "iap_assertion_required")
            assert "victim" not in answer.text
        forgeries = {
            "wrong audience": iap_token(keys["iap"][0], aud="/projects/1/global/backendServices/2"),
            "another key": iap_token(keys["other"][0], email="victim@example.org"),
            "unknown key id": iap_token(keys["other"][0], kid="iap-9"),
            "expired": iap_token(
                keys["iap"][0], iat=int(time.time()) - 7200, exp=int(time.time()) - 3600
            ),
            "not IAP's issuer": iap_token(keys["iap"][0], iss="https://accounts.google.com"),
            "no email": iap_token(keys["iap"][0], email=None),
            "garbage": "not-a-jwt",
        }
        for why, token in forgeries.items():
            answer = client.get(job_url, headers={**victim, ASSERTION: token})
            assert (answer.status_code, answer.json()["code"]) == (
                401,
                "invalid_iap_assertion",
            ), (why, answer.text)
            assert token not in answer.text, why  # a token is never quoted back
        # A Google-signed OIDC token (RS256, another audience) is no IAP assertion either.
        rsa_private, rsa_public = _rsa_pem()
        certs.keys["kid-1"] = rsa_public
        oidc = make_token(rsa_private)
        assert_problem(client.get(job_url, headers={ASSERTION: oidc}), 401, "invalid_iap_assertion")
        store = client.app.state.store  # type: ignore[attr-defined]
        assert len(store.all_job_ids()) == 1  # only the victim's


def test_verified_assertion_names_the_owner(
    certs: CertsServer, keys: dict[str, tuple[str, str]]
) -> None:
    alice = {ASSERTION: iap_token(keys["iap"][0])}
    # Bob's assertion, with a header naming alice: the verified email wins.
    bob = {
        ASSERTION: iap_token(keys["iap"][0], email="bob@example.org"),
        HEADER: "alice@example.org",
    }
    with TestClient(create_app(iap_settings(certs.url))) as client:
        created = _submit(client, alice)
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        assert client.get(f"/calc/zpe/jobs/{job_id}", headers=alice).status_code == 200
        assert_problem(client.get(f"/calc/zpe/jobs/{job_id}", headers=bob), 404, "not_found")
        assert client.get("/calc/zpe/jobs", headers=bob).json()["jobs"] == []
        odd = {ASSERTION: iap_token(keys["iap"][0], email="alice smith")}
        assert_problem(client.get("/calc/zpe/jobs", headers=odd), 401, "invalid_identity")
        store = client.app.state.store  # type: ignore[attr-defined]
        assert store.get_job(job_id).value.owner == "alice@example.org"
    assert certs.hits == 1  # IAP's keys were fetched once and cached


def test_unreachable_keys_answer_503(keys: dict[str, tuple[str, str]]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/iap/verify/public_key"
    with TestClient(create_app(iap_settings(dead))) as client:
        answer = client.get("/calc/zpe/jobs", headers={ASSERTION: iap_token(keys["iap"][0])})
        assert_problem(answer, 503, "auth_unavailable")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"iap_audience": None}, "ZPE_IAP_AUDIENCE"),
        ({"ingress": "all"}, "ZPE_INGRESS=all"),
        ({"ingress": None}, "ZPE_INGRESS=None"),
    ],
    ids=["no-audience", "public-ingress", "ingress-not-stated"],
)
def test_identity_header_mode_refused_at_start(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        create_app(iap_settings("http://127.0.0.1:1/certs", **overrides))


def test_crypt_module_signs_es256() -> None:
    """The test's own tokens are what IAP sends: ES256 with a key id."""
    private, _ = _es256_pem()
    header = jwt.decode_header(iap_token(private))
    assert header == {"alg": "ES256", "typ": "JWT", "kid": "iap-1"}
    assert isinstance(es256.ES256Signer.from_string(private), crypt.Signer)
