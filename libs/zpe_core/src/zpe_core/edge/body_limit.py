"""A cap on request bodies at the ASGI level, for every HTTP service of the project.

A ``Content-Length`` check alone lets a chunked request (no length) through, and
the framework then reads it whole before any route, authentication included,
runs. ``BodyLimit`` wraps the app's ``receive``: it reads the body itself,
counting bytes, and answers 413 (``application/problem+json``, code
``request_too_large`` or a route's own) as soon as the count passes the cap,
without ever calling the app. Within the cap the body is replayed to the app
unchanged, so at most ``limit`` bytes of a request are ever held. Pure ASGI, no
web framework: the API and the worker service both wrap their apps with it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from zpe_core.edge.problems import problem_body, send_problem

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def describe_bytes(n: int) -> str:
    """``n`` bytes in words a person reads at once: ``1088 KiB (1114112 bytes)``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            amount = n / size
            text = f"{amount:.0f}" if amount == int(amount) else f"{amount:.2f}"
            return f"{text} {unit} ({n} bytes)"
    return f"{n} bytes"


@dataclass(frozen=True)
class RouteLimit:
    """A different cap (and problem code) for the paths ``pattern`` matches."""

    pattern: re.Pattern[str]
    limit: int
    code: str = "request_too_large"
    what: str = "request bodies"


class BodyLimit:
    """ASGI middleware: 413 for any HTTP request whose body passes its cap."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        routes: Sequence[RouteLimit] = (),
        code: str = "request_too_large",
    ) -> None:
        self.app = app
        self.default = RouteLimit(re.compile(""), limit, code)
        self.routes = tuple(routes)

    def _limit_for(self, path: str) -> RouteLimit:
        for route in self.routes:
            if route.pattern.fullmatch(path):
                return route
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self._limit_for(scope.get("path", ""))
        declared = _content_length(scope)
        if declared is not None and (declared < 0 or declared > rule.limit):
            await _too_large(send, rule, scope)  # before a byte of the body is read
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body = message.get("body", b"")
            size += len(body)
            if size > rule.limit:
                await _too_large(send, rule, scope)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: a disconnect, when it comes

        await self.app(scope, replay, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1  # malformed: refused like an oversized one
    return None


async def _too_large(send: Send, rule: RouteLimit, scope: Scope) -> None:
    problem = problem_body(
        413,
        rule.code,
        "Request too large",
        f"{rule.what} are limited to {describe_bytes(rule.limit)}",
        instance=scope.get("path", ""),
        limit_bytes=rule.limit,
    )
    await send_problem(send, problem, close=True)  # the rest of the body is never read
