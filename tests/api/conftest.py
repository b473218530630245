"""An API app on a private store with the mock engine, driven by TestClient."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from zpe_api.main import create_app
from zpe_core.settings import Settings

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def make_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "store_url": "memory://",
        "execution_mode": "inprocess",
        "inprocess_concurrency": 2,
        "default_engine": "mock",
        "reaper_interval_seconds": 0.5,
    }
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def h2_input() -> str:
    return (SAMPLES / "h2_zpe.in").read_text()


@pytest.fixture
def client() -> Iterator[TestClient]:
    """Mock engine, memory store, thread workers: jobs finish in milliseconds."""
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client


@pytest.fixture
def idle_client() -> Iterator[TestClient]:
    """No worker ever runs a task (http-pull mode, no workers): jobs stay queued."""
    with TestClient(create_app(make_settings(execution_mode="http-pull"))) as test_client:
        yield test_client


def wait_for(client: TestClient, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = client.get(f"/calc/zpe/jobs/{job_id}").json()
        if status["state"] in ("done", "failed", "cancelled"):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not finish: {status}")
        time.sleep(0.02)


WaitFor = Callable[[TestClient, str], dict[str, Any]]
