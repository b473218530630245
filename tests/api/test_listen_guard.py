"""``ZPE_AUTH_MODE=none`` is served on loopback only (or with a loudly logged override)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from tests.fixtures.servers import free_port
from zpe_api.listen import check_listen_address, is_loopback
from zpe_core.errors import ConfigurationError
from zpe_core.settings import Settings


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "192.168.0.7", "zpe.example.com"])
def test_auth_none_off_loopback_is_refused(host: str) -> None:
    with pytest.raises(ConfigurationError, match="ZPE_AUTH_MODE=none") as exc:
        check_listen_address(Settings(auth_mode="none", store_url="memory://"), host)
    assert exc.value.code == "invalid_setting"
    assert repr(host) in str(exc.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_auth_none_on_loopback_starts(host: str) -> None:
    assert is_loopback(host)
    check_listen_address(Settings(auth_mode="none", store_url="memory://"), host)


def test_api_keys_may_listen_anywhere() -> None:
    check_listen_address(Settings(auth_mode="api-keys", store_url="memory://"), "0.0.0.0")


def test_override_is_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(auth_mode="none", store_url="memory://", allow_anonymous_network=True)
    with caplog.at_level(logging.WARNING, logger="zpe.api.listen"):
        check_listen_address(settings, "0.0.0.0")
    (record,) = [r for r in caplog.records if r.name == "zpe.api.listen"]
    assert record.levelno == logging.WARNING
    assert "anonymous" in record.getMessage() and "0.0.0.0" in record.getMessage()


def test_zpe_serve_refuses_to_start_public_and_anonymous() -> None:
    """The process itself: exits 2 before listening, saying why."""
    env = {**os.environ, "ZPE_AUTH_MODE": "none", "ZPE_STORE_URL": "memory://"}
    env.pop("ZPE_ALLOW_ANONYMOUS_NETWORK", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zpe_api.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "refusing to listen on '0.0.0.0'" in proc.stderr
