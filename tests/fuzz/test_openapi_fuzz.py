"""Schemathesis against the API's own OpenAPI document: no 5xx, responses match schemas.

The app runs in-process (ASGI) on a memory store with the mock engine and
thread workers; every operation gets ``FUZZ_EXAMPLES`` generated requests
(``ZPE_FUZZ_EXAMPLES`` raises it for a longer run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.api.conftest import make_settings
from zpe_api.main import create_app

pytestmark = pytest.mark.fuzz

FUZZ_EXAMPLES = int(os.environ.get("ZPE_FUZZ_EXAMPLES", "15"))

app = create_app(
    make_settings(
        admin_token=SecretStr("fuzz-admin-token-0123456789"),
        max_input_bytes=64 * 1024,
        max_active_jobs_per_owner=1000,
    )
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module", autouse=True)
def _stop_app() -> Iterator[None]:
    yield
    shutdown_lifespans()  # schemathesis started the app's lifespan; stop its workers


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_openapi(case: schemathesis.Case) -> None:
    case.call_and_validate(
        checks=[not_a_server_error, response_schema_conformance, status_code_conformance]
    )
