"""``ApiClient``: the HTTP calls of the user API, and the one reader of problem details.

Every error answer of the API is an RFC 9457 problem (``application/problem+json``)
with a stable ``code``; ``ApiError.from_response`` turns any error answer (a problem,
another JSON body, or none) into one exception with ``status``, ``code`` and
``detail``. The CLI, the Python API and the pull worker all read errors through it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx

from zpe_client.models import JobCreated, JobList, JobRequest, JobStatus
from zpe_client.settings import ClientSettings

JOBS = "/calc/zpe/jobs"


class ApiError(Exception):
    """The API answered with an error: HTTP ``status``, stable ``code``, human ``detail``."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title
        self.retry_after = retry_after  # seconds, from a 429's or 503's Retry-After

    @classmethod
    def from_response(cls, response: httpx.Response) -> Self:
        """Read an error answer; a body that is not a problem gives ``code`` ``http_<status>``."""
        status = response.status_code
        retry_after = _retry_after(response)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = response.text[:500] or response.reason_phrase
            return cls(status, f"http_{status}", text, retry_after=retry_after)
        code = body.get("code")
        detail = body.get("detail")
        title = body.get("title")
        return cls(
            status,
            str(code) if code else f"http_{status}",
            str(detail if detail is not None else title or body),
            title=str(title) if title is not None else None,
            retry_after=retry_after,
        )


def problem_code(response: httpx.Response | None) -> str | None:
    """The ``code`` of an error answer (None for a success or no answer)."""
    if response is None or response.status_code < 400:
        return None
    return ApiError.from_response(response).code


@dataclass(frozen=True)
class StatusPoll:
    """One poll of a job: its status (None: unchanged since ``etag``) and when to poll again."""

    status: JobStatus | None
    etag: str | None
    retry_after: float


class ApiClient:
    """An HTTP client of the ZPE API (httpx) with a bearer token.

    ``token`` may be replaced at any time (a pull worker renews its worker token).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    @classmethod
    def from_settings(cls, settings: ClientSettings | None = None, **kwargs: Any) -> ApiClient:
        settings = settings or ClientSettings.load()
        return cls(settings.api_url, token=settings.api_key, **kwargs)

    # -------------------------------------------------------------- plumbing

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**headers, **(extra or {})}

    def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """One request, whatever it answers (the caller reads the status)."""
        return self.http.request(
            method, path, json=json, params=params, headers=self.headers(headers), content=content
        )

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One request; an error answer raises ``ApiError``."""
        response = self.send(method, path, json=json, params=params, headers=headers)
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -------------------------------------------------------------- the user API

    def preview(self, request: JobRequest) -> dict[str, Any]:
        """``POST /calc/zpe/parse``: the structure and SCF count, nothing stored."""
        body: dict[str, Any] = self.call("POST", "/calc/zpe/parse", json=_body(request)).json()
        return body

    def submit(self, request: JobRequest, *, idempotency_key: str | None = None) -> JobCreated:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        response = self.call("POST", JOBS, json=_body(request), headers=headers)
        return JobCreated.model_validate(response.json())

    def status(self, job_id: str, *, etag: str | None = None) -> StatusPoll:
        """The job's status; with ``etag``, None while it is unchanged (304)."""
        headers = {"If-None-Match": etag} if etag else None
        response = self.send("GET", f"{JOBS}/{job_id}", headers=headers)
        retry_after = _retry_after(response)
        retry_after = 1.0 if retry_after is None else retry_after
        if response.status_code == 304:
            return StatusPoll(None, etag, retry_after)
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        status = JobStatus.model_validate(response.json())
        return StatusPoll(status, response.headers.get("ETag"), retry_after)

    def follow(
        self,
        job_id: str,
        *,
        timeout: float = 3600.0,
        on_status: Callable[[JobStatus], None] | None = None,
    ) -> JobStatus:
        """Poll (with ETags, at the pace the API asks) until the job ends.

        ``on_status`` sees every new status; ``TimeoutError`` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        etag: str | None = None
        status: JobStatus | None = None
        while True:
            try:
                poll = self.status(job_id, etag=etag)
            except ApiError as exc:
                if exc.status != 429:
                    raise
                time.sleep(min(30.0, exc.retry_after or 5.0))  # polling too fast: wait as told
                continue
            if poll.status is not None:
                status, etag = poll.status, poll.etag
                if on_status is not None:
                    on_status(status)
            if status is not None and status.state.terminal:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up waiting for job {job_id} after {timeout:.0f} s")
            time.sleep(min(2.0, poll.retry_after))

    def result(self, job_id: str) -> dict[str, Any]:
        """The result document of a done job (``ApiError`` 409 before)."""
        body: dict[str, Any] = self.call("GET", f"{JOBS}/{job_id}/result").json()
        return body

    def file(self, job_id: str, kind: str) -> bytes:
        """One of the job's files: summary, freqs, result, thermo, vibrations, modes, input."""
        return self.call("GET", f"{JOBS}/{job_id}/files", params={"kind": kind}).content

    def list_jobs(
        self, *, query: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> JobList:
        params: dict[str, Any] = {"limit": limit}
        if query:
            params["q"] = query
        if cursor:
            params["cursor"] = cursor
        return JobList.model_validate(self.call("GET", JOBS, params=params).json())

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self.call("POST", f"{JOBS}/{job_id}/cancel").json())


def _body(request: JobRequest) -> dict[str, Any]:
    """What the caller set, so the server's defaults (e.g. the engine) apply to the rest."""
    return request.model_dump(mode="json", exclude_unset=True)


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (None: absent, or an HTTP date, which this API never sends)."""
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
