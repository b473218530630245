"""Attacks on ``GET /metrics``: make the store do work, or read it without credentials.

Before the fix a scrape listed every job id and read up to 10 000 job records
plus as many ready markers every 5 s (up to ~4000 store reads a second for a
scraper, or an anonymous caller, hitting it), and a scrape arriving during a
scan waited for it. Now a scan lists and reads at most ``metrics_scan_limit``
records each, runs at most once per ``metrics_cache_seconds`` (defaults: 1000
records, 30 s) and never twice at once: a scrape during a scan answers the last
snapshot. ``ZPE_METRICS_TOKEN`` makes the endpoint want a bearer token.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.api.conftest import make_settings
from tests.api.test_users_access import ADMIN, bearer, issue
from zpe_api.main import create_app
from zpe_client.models import JobRequest
from zpe_core.jobs.service import JobService
from zpe_core.observability.exporter import MetricsExporter
from zpe_core.settings import Settings
from zpe_core.store import open_store
from zpe_core.store.base import JobStore

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
TOKEN = "metrics-token-for-the-security-suite-0123"
JOBS = 25


def _store_with_jobs() -> JobStore:
    store = open_store("memory://")
    service = JobService(store, None, make_settings(execution_mode="http-pull"))
    text = (SAMPLES / "h2_zpe.in").read_text()
    for i in range(JOBS):
        service.submit(JobRequest(input_text=text, engine="mock", delta=0.01 + i * 1e-4), owner="a")
    return store


def _count(store: JobStore, reads: Counter[str], gate: threading.Event | None = None) -> None:
    """Count the store's reads and listed keys (by prefix); optionally hold reads at ``gate``."""
    read, listing = store._read, store._list

    def counted_read(key: str) -> Any:
        reads["read"] += 1
        if gate is not None:
            reads["waiting"] += 1
            gate.wait(30)
        return read(key)

    def counted_list(prefix: str, **kwargs: Any) -> list[str]:
        keys = listing(prefix, **kwargs)
        reads[f"listed:{prefix}"] += len(keys)
        return keys

    store._read = counted_read  # type: ignore[method-assign]
    store._list = counted_list  # type: ignore[method-assign]


def _value(text: bytes, name: str) -> float:
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exported")


def test_a_scan_is_bounded_and_scrapes_between_scans_are_free() -> None:
    store = _store_with_jobs()
    reads: Counter[str] = Counter()
    _count(store, reads)
    exporter = MetricsExporter(store, scan_limit=10, cache_seconds=3600)
    first = exporter.render()
    assert reads["listed:jobs/"] <= 11, reads  # not every job id: the cap (+1 to tell more)
    assert reads["read"] <= 2 * 10, reads  # jobs + ready markers, each at most the cap
    assert _value(first, "zpe_metrics_scan_truncated") == 1
    before = dict(reads)
    for _ in range(100):
        exporter.render()
    assert dict(reads) == before  # 100 scrapes within the interval: no store access
    assert _value(exporter.render(), "zpe_metrics_scan_age_seconds") >= 0


def test_defaults_cost_the_store_little() -> None:
    settings = Settings()
    worst = 2 * settings.metrics_scan_limit / settings.metrics_cache_seconds
    assert worst <= 100, f"up to {worst:.0f} store reads a second for /metrics"


def test_a_scrape_during_a_scan_does_not_wait_for_it() -> None:
    store = _store_with_jobs()
    exporter = MetricsExporter(store, scan_limit=10, cache_seconds=0.0)  # every scrape rescans
    exporter.render()  # a first snapshot
    reads: Counter[str] = Counter()
    gate = threading.Event()
    _count(store, reads, gate)
    slow = threading.Thread(target=exporter.render)
    slow.start()  # its scan now waits at the gate, holding the scan
    try:
        while reads["waiting"] == 0:
            slow.join(0.01)
        answered: list[bytes] = []
        other = threading.Thread(target=lambda: answered.append(exporter.render()))
        other.start()
        other.join(20)
        assert answered, "a scrape waited for another's store scan"
        assert slow.is_alive() and reads["waiting"] == 1  # one scan at a time
        assert _value(answered[0], "zpe_jobs") >= 0
    finally:
        gate.set()
        slow.join(30)


def test_metrics_token_is_required_when_set() -> None:
    settings = make_settings(
        execution_mode="http-pull",
        auth_mode="api-keys",
        admin_token=SecretStr(ADMIN),
        metrics_token=SecretStr(TOKEN),
    )
    with TestClient(create_app(settings)) as client:
        user_key = issue(client, "alice")["key"]
        refused = {
            "metrics_token_required": {},
            "invalid_metrics_token": bearer(TOKEN[:-1] + "x"),
        }
        for code, headers in refused.items():
            answer = client.get("/metrics", headers=headers)
            assert answer.status_code == 401, answer.text
            assert answer.json()["code"] == code
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN not in answer.text
        for other in (bearer(user_key), bearer(ADMIN), {"Authorization": f"Basic {TOKEN}"}):
            assert client.get("/metrics", headers=other).status_code == 401
        answer = client.get("/metrics", headers=bearer(TOKEN))
        assert answer.status_code == 200 and "zpe_jobs" in answer.text


def test_metrics_stay_public_without_a_token() -> None:
    settings = make_settings(execution_mode="http-pull")
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 200
