"""What the API believes about where a request comes from: its Host and its client address.

* ``HostCheck`` (pure ASGI): with ``ZPE_AUTH_MODE=none`` the API trusts whoever
  can reach it, so a web page on another site must not be able to reach it
  through DNS rebinding (a name of the attacker's that resolves to 127.0.0.1).
  Such a request carries the attacker's name in ``Host``; it is answered 421
  ``host_not_allowed``. Accepted: the loopback names (``localhost``,
  127.0.0.0/8, ``[::1]``), the address the server listens on (ASGI
  ``scope["server"]``: an IP literal, never a rebinding name) and the names in
  ``ZPE_ALLOWED_HOSTS``. Only the name is compared: a browser's ``Host``
  always names the port it connected to, so the port adds nothing here.
* ``client_address``: the peer, or, when the peer is a trusted proxy
  (``ZPE_TRUSTED_PROXIES``), the rightmost ``X-Forwarded-For`` entry that is
  not itself a trusted proxy. Entries to its left were written by the client
  and are never believed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from zpe_core.edge.hosts import host_name, is_loopback
from zpe_core.edge.problems import problem_body, send_problem
from zpe_core.errors import ConfigurationError
from zpe_core.settings import ApiSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _names(setting: str) -> frozenset[str]:
    return frozenset(host_name(name) for name in setting.split(",") if name.strip())


class HostCheck:
    """Answers 421 to a request whose ``Host`` names none of the allowed hosts."""

    def __init__(self, app: ASGIApp, *, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(allowed)
        self.any_host = "*" in self.allowed

    def allows(self, host: str | None, server_host: str | None) -> bool:
        if self.any_host:
            return True
        if not host:
            return False
        name = host_name(host)
        if is_loopback(name) or name in self.allowed:
            return True
        return server_host is not None and name == host_name(server_host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next(
            (v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None
        )
        server = scope.get("server")
        if self.allows(host, str(server[0]) if server else None):
            await self.app(scope, receive, send)
            return
        problem = problem_body(
            421,
            "host_not_allowed",
            "Host not allowed",
            "this API answers only to the host names it serves (localhost, "
            "its own address, ZPE_ALLOWED_HOSTS); the Host header named another",
        )
        await send_problem(send, problem)


def install_host_check(app: FastAPI, settings: ApiSettings) -> None:
    """The Host check, when the API has no authentication (``ZPE_AUTH_MODE=none``).

    With API keys a rebinding page gains nothing: the browser does not hold the key.
    """
    if settings.auth_mode == "none":
        app.add_middleware(HostCheck, allowed=_names(settings.allowed_hosts))


# ---------------------------------------------------------------------- client address


@lru_cache(maxsize=8)
def trusted_networks(setting: str) -> tuple[bool, tuple[Network, ...]]:
    """``ZPE_TRUSTED_PROXIES`` parsed: (the direct peer is trusted whatever it is, networks).

    ``ConfigurationError`` names an entry that is not an address or network."""
    any_peer = False
    networks: list[Network] = []
    for item in setting.split(","):
        item = item.strip()
        if not item:
            continue
        if item == "*":
            any_peer = True
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigurationError(
                f"ZPE_TRUSTED_PROXIES: {item!r} is not an IP address or network (CIDR), "
                "nor '*' (the direct peer is a proxy)",
                code="invalid_setting",
            ) from None
    return any_peer, tuple(networks)


def _in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(request: Request, settings: ApiSettings) -> str:
    """The address a request comes from, as far as the trusted proxies vouch for it."""
    peer = request.client.host if request.client else "unknown"
    any_peer, networks = trusted_networks(settings.trusted_proxies)
    if not (any_peer or _in(peer, networks)):
        return peer
    hops = [
        hop.strip()
        for header in request.headers.getlist("x-forwarded-for")
        for hop in header.split(",")
        if hop.strip()
    ]
    for hop in reversed(hops):
        if not _in(hop, networks):
            return hop
    return hops[0] if hops else peer
