"""Request correlation and the API's own observability wiring.

``RequestContextMiddleware`` (pure ASGI) takes the caller's ``X-Request-ID``
(1-128 safe characters) or makes one, binds it, and the ``job_id`` of
``/calc/zpe/jobs/{id}/...`` paths, for every log line of the request, and
echoes it in the response's ``X-Request-ID`` header. The request id travels
on: an in-process dispatch hands it to the worker thread or process, a Cloud
Tasks push carries it as the ``X-Request-ID`` header of the push request.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zpe_core.control.limits import TokenBucketLimiter
from zpe_core.observability.logs import (
    REQUEST_ID_HEADER,
    log_context,
    new_request_id,
    register_secret,
    valid_request_id,
)
from zpe_core.settings import ApiSettings

_JOB_PATH = re.compile(r"^/calc/zpe/jobs/([A-Za-z0-9._-]{1,200})(?:/|$)")
_HEADER = REQUEST_ID_HEADER.lower().encode()


class RequestContextMiddleware:
    """Binds ``request_id`` (and ``job_id``) to the request's logs; echoes the id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = None
        for name, value in scope.get("headers", []):
            if name == _HEADER:
                presented = valid_request_id(value.decode("latin-1"))
                break
        request_id = presented or new_request_id()
        match = _JOB_PATH.match(scope.get("path", ""))
        job_id = match.group(1) if match else None

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == _HEADER for name, _ in headers):
                    headers.append((_HEADER, request_id.encode()))
                message["headers"] = headers
            await send(message)

        with log_context(request_id=request_id, job_id=job_id):
            await self.app(scope, receive, send_with_id)


def install_observability(app: FastAPI, settings: ApiSettings) -> None:
    """Request ids, the polling limiter, and the secrets the logs must never show."""
    app.add_middleware(RequestContextMiddleware)
    app.state.poll_limiter = (
        TokenBucketLimiter(settings.poll_rate_per_second, settings.poll_burst)
        if settings.poll_rate_per_second > 0
        else None
    )
    for secret in (
        settings.admin_token,
        settings.push_shared_secret,
        settings.api_key,
        settings.metrics_token,
    ):
        if secret is not None:
            register_secret(secret.get_secret_value())
