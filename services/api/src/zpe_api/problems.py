"""RFC 9457 problem details: every error answer has a stable ``code``."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from zpe_core.edge.problems import PROBLEM_JSON, problem_body, problem_headers, status_for
from zpe_core.errors import STORE_UNAVAILABLE_REASON, StoreUnavailable, TooManyRequests, ZpeError

__all__ = ["Problem", "install_problem_handlers", "problem", "problem_responses"]

log = logging.getLogger("zpe.api")


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
    """A problem-details response (the body: ``zpe_core.edge.problems.problem_body``)."""
    body = problem_body(status, code, title, detail, instance=instance, **extra)
    return JSONResponse(
        body, status_code=status, media_type=PROBLEM_JSON, headers=problem_headers(headers)
    )


class Problem(BaseModel):
    """RFC 9457 problem details, as every error answer of this API."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable machine-readable error code.")
    instance: str | None = None


_DESCRIPTIONS = {
    400: "Malformed request (e.g. a body that is not JSON)",
    401: "Missing, forged or revoked credentials",
    403: "Not allowed, or the endpoint is closed",
    404: "Not found (or not the caller's)",
    409: "Conflicts with the current state",
    413: "Request or input too large",
    422: "Invalid request or input",
    429: "Too many requests: see Retry-After",
    503: "Store unavailable or switched off: see Retry-After",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the problem statuses it may answer, in the OpenAPI."""
    return {
        status: {
            "model": Problem,
            "description": _DESCRIPTIONS.get(status, "Error"),
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


def install_problem_handlers(app: FastAPI) -> None:
    """Turn every error into problem details; never leak a traceback."""

    @app.exception_handler(ZpeError)
    async def zpe_error(request: Request, exc: ZpeError) -> JSONResponse:
        status = status_for(exc)
        headers = {"Retry-After": "5"} if status == 503 else None
        if isinstance(exc, TooManyRequests):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        if status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="zpe"'}
        detail = exc.message
        if isinstance(exc, StoreUnavailable):
            # The message names paths, buckets or hosts: for the log, not for the caller.
            log.error(
                "store unavailable",
                extra={"code": exc.code, "path": request.url.path, "error": exc.message},
            )
            detail = STORE_UNAVAILABLE_REASON
        elif status >= 500:
            log.error("request failed", extra={"code": exc.code, "path": request.url.path})
        return problem(
            status,
            exc.code,
            type(exc).__name__,
            detail,
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
