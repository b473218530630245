"""RFC 9457 problem details, built once for every HTTP answer of an error.

Both servers (the API and the push worker) answer errors with these bodies;
here they are plain dicts (no FastAPI in ``zpe_core``): each server wraps them
in its framework's response. ``detail`` is always redacted, so no answer ever
echoes a credential, and the one table of error classes to statuses lives here.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from zpe_core.errors import (
    ArtifactTooLarge,
    AuthUnavailable,
    ConfigurationError,
    Forbidden,
    InputError,
    InputTooLarge,
    NotFound,
    StateConflict,
    StoreUnavailable,
    SwitchedOff,
    TooManyRequests,
    Unauthorized,
    ZpeError,
)
from zpe_core.observability.logs import REQUEST_ID_HEADER, current_request_id, redact

PROBLEM_JSON = "application/problem+json"

_STATUS: list[tuple[type[ZpeError], int]] = [
    (InputTooLarge, 413),
    (InputError, 422),
    (NotFound, 404),
    (StateConflict, 409),
    (StoreUnavailable, 503),
    (AuthUnavailable, 503),
    (SwitchedOff, 503),
    (Unauthorized, 401),
    (Forbidden, 403),
    (ArtifactTooLarge, 507),
    (ConfigurationError, 500),
    (TooManyRequests, 429),
]


def status_for(exc: ZpeError) -> int:
    """The HTTP status of an error (500 for any error not in the table)."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def problem_body(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The problem-details body; ``detail`` redacted, ``extra`` members that are None left out."""
    body: dict[str, Any] = {
        "type": f"urn:zpe:problem:{code}",
        "title": title,
        "status": status,
        "detail": redact(str(detail)),  # never echo a credential
        "code": code,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None and k != "detail"})
    return body


def problem_headers(headers: dict[str, str] | None = None) -> dict[str, str] | None:
    """``headers`` plus the request id, also on answers built outside the request middleware."""
    request_id = current_request_id()
    if request_id:
        return {**(headers or {}), REQUEST_ID_HEADER: request_id}
    return headers


async def send_problem(
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    body: dict[str, Any],
    *,
    close: bool = False,
) -> None:
    """Answer ``body`` (from ``problem_body``) on a raw ASGI ``send``, for guards that run
    before any framework; ``close`` tells the client the connection ends (a body not read)."""
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(data)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": body["status"], "headers": headers})
    await send({"type": "http.response.body", "body": data})
