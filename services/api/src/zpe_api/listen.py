"""Refuse to serve ``ZPE_AUTH_MODE=none`` beyond loopback.

With ``none`` every caller is the one user ``anonymous``, who may list, read and cancel every
job: fine for one person on one machine, never for a network. ``zpe serve`` therefore starts
with ``none`` only on a loopback address, unless ``ZPE_ALLOW_ANONYMOUS_NETWORK=true`` says the
operator means it (a network of one, a trusted proxy in front), which is logged loudly.
"""

from __future__ import annotations

import ipaddress
import logging

from zpe_core.errors import ConfigurationError
from zpe_core.settings import ApiSettings

log = logging.getLogger("zpe.api.listen")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IPs; a wildcard or any other name is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen_address(settings: ApiSettings, host: str) -> None:
    """Raise ``ConfigurationError`` if anonymous access would reach beyond this machine."""
    if settings.auth_mode != "none" or is_loopback(host):
        return
    if settings.allow_anonymous_network:
        log.warning(
            "ZPE_AUTH_MODE=none on %s with ZPE_ALLOW_ANONYMOUS_NETWORK=true: EVERY CALLER "
            "REACHING THIS ADDRESS IS THE USER 'anonymous' AND MAY READ AND CANCEL EVERY JOB",
            host,
            extra={"listen_host": host, "auth_mode": "none"},
        )
        return
    raise ConfigurationError(
        f"ZPE_AUTH_MODE=none serves every caller as 'anonymous'; refusing to listen on {host!r} "
        "(not loopback). Set ZPE_AUTH_MODE=api-keys, listen on 127.0.0.1, or set "
        "ZPE_ALLOW_ANONYMOUS_NETWORK=true if everyone who can reach it may see every job",
        code="invalid_setting",
    )
