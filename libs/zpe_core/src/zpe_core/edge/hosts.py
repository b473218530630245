"""Host names and loopback addresses (the Host check, the push secret's emulator rule)."""

from __future__ import annotations

import ipaddress


def host_name(host: str) -> str:
    """The name part of a ``host[:port]`` value, lower case: ``[::1]:8000`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host  # a bare name, or an unbracketed IPv6 address


def is_loopback(host: str) -> bool:
    """``localhost``, or an address of the loopback network (127.0.0.0/8, ::1)."""
    name = host_name(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
