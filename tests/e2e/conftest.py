"""Fixtures of the browser tests: a real API process, headless Chromium, a fresh page.

The API runs as ``uvicorn zpe_api.main:create_app`` in its own process on a
free port, with a file store in a temporary directory, in-process workers and
the ``mock`` engine. Chromium is Debian's ``/usr/bin/chromium`` (``ZPE_CHROMIUM``
overrides it); Playwright never downloads a browser. Without Chromium the tests
skip on a laptop and fail when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import require_or_skip
from tests.fixtures.servers import free_port, wait_until_up

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"
CHROMIUM = os.environ.get("ZPE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("ZPE_TEST_ARTIFACTS") or REPO / "artifacts")
WAIT_MS = 60_000


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real API process: file store, in-process workers, mock engine."""
    workdir = tmp_path_factory.mktemp("ui-api")
    port = free_port()
    env = {
        **os.environ,
        "ZPE_STORE_URL": f"file://{workdir / 'store'}",
        "ZPE_EXECUTION_MODE": "inprocess",
        "ZPE_INPROCESS_CONCURRENCY": "2",
        "ZPE_DEFAULT_ENGINE": "mock",
        "ZPE_ALLOWED_ENGINES": "qe,mock",
        # Slows each mock task a little (where supported) so that progress can be watched.
        "ZPE_MOCK_DELAY_SECONDS": "0.2",
    }
    log_path = workdir / "api.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "zpe_api.main:create_app", "--factory",
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its worker processes share its process group
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/readyz", proc, log=log_path, timeout=60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # Pool workers can outlive the API process: end whatever is left of its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    require_or_skip(
        sync_playwright is not None and Path(CHROMIUM).exists(),
        f"Playwright for Python and Chromium at {CHROMIUM} (Debian package 'chromium')",
    )
    assert sync_playwright is not None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser, api_url: str) -> Iterator[Page]:
    """A fresh browser context on the API; an uncaught script error fails the test."""
    context = browser.new_context(
        base_url=api_url, accept_downloads=True, viewport={"width": 1100, "height": 900}
    )
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
