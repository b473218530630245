"""The one reader of error answers: problem details, other bodies, none."""

from __future__ import annotations

import httpx
import pytest

from zpe_client.http import ApiClient, ApiError, problem_code


def answer(status: int, **kwargs: object) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "http://api/x"), **kwargs)


def test_a_problem_gives_status_code_detail_and_title() -> None:
    body = {"type": "urn:zpe:problem:missing_namelist", "title": "Invalid input", "status": 422,
            "detail": "no &system namelist", "code": "missing_namelist"}  # fmt: skip
    error = ApiError.from_response(answer(422, json=body))
    assert (error.status, error.code, error.detail, error.title) == (
        422, "missing_namelist", "no &system namelist", "Invalid input",
    )  # fmt: skip
    assert str(error) == "missing_namelist: no &system namelist"
    assert error.retry_after is None


def test_retry_after_is_kept() -> None:
    response = answer(429, json={"code": "too_many_requests", "detail": "slow down"},
                      headers={"Retry-After": "7"})  # fmt: skip
    assert ApiError.from_response(response).retry_after == 7.0


@pytest.mark.parametrize(
    ("kwargs", "detail"),
    [
        ({"text": "<html>Bad Gateway</html>"}, "<html>Bad Gateway</html>"),
        ({"json": ["not", "an", "object"]}, '["not","an","object"]'),
        ({}, "Bad Gateway"),
    ],
)
def test_a_body_that_is_no_problem_gets_an_http_code(
    kwargs: dict[str, object], detail: str
) -> None:
    error = ApiError.from_response(answer(502, **kwargs))
    assert (error.status, error.code, error.detail) == (502, "http_502", detail)


def test_a_json_body_without_code_or_detail() -> None:
    error = ApiError.from_response(answer(404, json={"title": "Not Found"}))
    assert (error.code, error.detail) == ("http_404", "Not Found")


def test_problem_code_is_none_for_successes_and_no_answer() -> None:
    assert problem_code(None) is None
    assert problem_code(answer(200, json={"code": "x"})) is None
    assert problem_code(answer(409, json={"code": "event_in_progress"})) == "event_in_progress"


def test_api_client_call_raises_the_parsed_error_and_sends_the_token() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization", ""))
        return httpx.Response(404, json={"code": "not_found", "detail": "no job j1"})

    api = ApiClient("http://api/", token="zpe_key_1", transport=httpx.MockTransport(handle))
    with pytest.raises(ApiError) as caught:
        api.result("j1")
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    api.token = "zpe_key_2"  # a renewed token is used from the next call on
    with pytest.raises(ApiError):
        api.cancel("j1")
    assert seen == ["Bearer zpe_key_1", "Bearer zpe_key_2"]
