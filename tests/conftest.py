"""Shared test configuration.

Tests that need ``pw.x``, ``redis-server`` or an emulator may skip on a laptop
without them, but when ``CI=true`` a missing dependency fails the run
(``require_or_skip``).
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.cloud_tasks",
    "tests.fixtures.gcs_rate_limit",
]

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_or_skip(available: bool, what: str) -> None:
    """Skip when ``what`` is missing, except in CI where that is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required when CI=true but is not available", pytrace=False)
    pytest.skip(f"{what} not available")
