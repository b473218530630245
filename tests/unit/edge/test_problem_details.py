"""One problem-details builder for every HTTP answer of an error, and it redacts.

The push worker had its own builder that echoed ``detail`` as it was: an error
message that carried a credential went back to the caller.
"""

from __future__ import annotations

import json

from zpe_api.problems import problem
from zpe_core.edge.problems import PROBLEM_JSON, problem_body, status_for
from zpe_core.errors import InputError, InputTooLarge, NotFound, StoreUnavailable, ZpeError
from zpe_core.observability.logs import REDACTED, register_secret
from zpe_worker.app import _problem as worker_problem

SECRET = "push-secret-for-the-problem-test-0123456789"


def test_the_worker_redacts_a_credential_in_a_problem_detail() -> None:
    register_secret(SECRET)
    response = worker_problem(503, "task_retry", f"the store said: auth {SECRET} refused")
    body = json.loads(response.body)
    assert SECRET not in response.body.decode()
    assert REDACTED in body["detail"]
    assert response.media_type == PROBLEM_JSON
    assert response.headers["Retry-After"] == "5"


def test_the_api_and_the_worker_build_the_same_body() -> None:
    detail = "Authorization: Bearer zpe_worker_abc_0123456789abcdef0123456789abcdef"
    api = json.loads(problem(409, "stale_lease", "stale lease", detail).body)
    worker = json.loads(worker_problem(409, "stale_lease", detail).body)
    assert api == worker == problem_body(409, "stale_lease", "stale lease", detail)
    assert "0123456789abcdef0123456789abcdef" not in api["detail"]
    assert api["type"] == "urn:zpe:problem:stale_lease" and api["code"] == "stale_lease"


def test_one_status_table() -> None:
    assert status_for(InputTooLarge("x")) == 413  # before its base class InputError
    assert status_for(InputError("x")) == 422
    assert status_for(NotFound("x")) == 404
    assert status_for(StoreUnavailable("x")) == 503
    assert status_for(ZpeError("x")) == 500
