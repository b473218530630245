"""RFC 9457 problem details: every error answer has a stable ``code``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from zpe_core.errors import (
    ArtifactTooLarge,
    ConfigurationError,
    InputError,
    InputTooLarge,
    NotFound,
    StateConflict,
    StoreUnavailable,
    ZpeError,
)

log = logging.getLogger("zpe.api")

PROBLEM_JSON = "application/problem+json"

_STATUS: list[tuple[type[ZpeError], int]] = [
    (InputTooLarge, 413),
    (InputError, 422),
    (NotFound, 404),
    (StateConflict, 409),
    (StoreUnavailable, 503),
    (ArtifactTooLarge, 507),
    (ConfigurationError, 500),
]


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem-details response."""
    body: dict[str, Any] = {
        "type": f"urn:zpe:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def status_for(exc: ZpeError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def install_problem_handlers(app: FastAPI) -> None:
    """Turn every error into problem details; never leak a traceback."""

    @app.exception_handler(ZpeError)
    async def zpe_error(request: Request, exc: ZpeError) -> JSONResponse:
        status = status_for(exc)
        headers = {"Retry-After": "5"} if status == 503 else None
        if status >= 500:
            log.error("request failed", extra={"code": exc.code, "path": request.url.path})
        return problem(
            status,
            exc.code,
            type(exc).__name__,
            exc.message,
            instance=request.url.path,
            headers=headers,
            source=exc.source.value,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type")}
            for err in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return problem(
            422,
            "invalid_request",
            "Invalid request",
            f"{where}: {first['msg']}",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
            exc.status_code, f"http_{exc.status_code}"
        )
        return problem(
            exc.status_code,
            code,
            str(exc.detail),
            str(exc.detail),
            instance=request.url.path,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return problem(
            500,
            "internal_error",
            "Internal error",
            "the server failed unexpectedly; the error was logged",
            instance=request.url.path,
        )
