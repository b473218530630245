"""Content-addressed reuse through the API: count engine runs (never time them here;
the < 200 ms resubmit figure is in bench/load_jobs.py and docs/benchmarks.md)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import SAMPLES, wait_for
from zpe_client.models import TaskResult, TaskSpec
from zpe_core.engines.mock import MockEngine


class EngineRuns:
    """Counts ``MockEngine.compute`` calls (thread workers share this process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self) -> None:
        with self._lock:
            self.count += 1


@pytest.fixture
def engine_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[EngineRuns]:
    runs = EngineRuns()
    original = MockEngine.compute

    def counting(self: MockEngine, spec: TaskSpec, workdir: Path) -> TaskResult:
        runs.add()
        return original(self, spec, workdir)

    monkeypatch.setattr(MockEngine, "compute", counting)
    yield runs


def _run(client: TestClient, text: str, **extra: Any) -> dict[str, Any]:
    created = client.post("/calc/zpe/jobs", json={"input_text": text, **extra})
    assert created.status_code == 201, created.text
    status = wait_for(client, created.json()["job_id"])
    assert status["state"] == "done", status
    return status


def test_resubmitting_a_finished_job_runs_no_engine(
    client: TestClient, engine_runs: EngineRuns
) -> None:
    text = (SAMPLES / "h2o_zpe.in").read_text()
    first = _run(client, text)
    assert engine_runs.count == 10  # 19 points, 9 rebuilt by symmetry
    assert first["progress"]["reused"] == 0
    second = _run(client, text)
    assert engine_runs.count == 10  # not one more SCF
    assert second["progress"] == {"done": 10, "total": 10, "fraction": 1.0, "reused": 10}
    one = client.get(f"/calc/zpe/jobs/{first['job_id']}/result").json()
    two = client.get(f"/calc/zpe/jobs/{second['job_id']}/result").json()
    assert one["freqs_cm"] == two["freqs_cm"]


def test_other_mobile_set_reuses_the_reference_point(
    client: TestClient, engine_runs: EngineRuns
) -> None:
    text = (SAMPLES / "h2o_zpe.in").read_text()
    # Every point computed: which points symmetry spares depends on the mobile set.
    oxygen = _run(client, text, mobile=[0], symmetry="off")
    assert engine_runs.count == 7  # reference + 6 displacements of O
    hydrogen = _run(client, text, mobile=[1], symmetry="off")
    assert hydrogen["progress"]["reused"] == 1  # the undisplaced reference
    assert engine_runs.count == 13
    both = _run(client, text, mobile=[0, 1], symmetry="off")
    assert both["progress"]["reused"] == 13  # every point was computed for the two above
    assert engine_runs.count == 13
    assert oxygen["progress"]["reused"] == 0


def test_isotope_reuses_forces_but_changes_frequencies(
    client: TestClient, engine_runs: EngineRuns
) -> None:
    text = (SAMPLES / "h2_zpe.in").read_text()
    h2 = _run(client, text)
    d2 = _run(client, text.replace("H  1.00794  H.pbe-kjpaw.UPF", "H  2.01410  H.pbe-kjpaw.UPF"))
    assert engine_runs.count == 4  # masses are not in task keys: forces are the same
    assert d2["progress"]["reused"] == 4  # (H2: 13 points, 4 computed with symmetry)
    nu_h2 = client.get(f"/calc/zpe/jobs/{h2['job_id']}/result").json()["zpe_ev"]
    nu_d2 = client.get(f"/calc/zpe/jobs/{d2['job_id']}/result").json()["zpe_ev"]
    assert nu_d2 == pytest.approx(nu_h2 * (1.00794 / 2.01410) ** 0.5, rel=1e-6)


def test_other_delta_reuses_only_the_reference(client: TestClient, engine_runs: EngineRuns) -> None:
    # (The mock engine reads no QE settings, so cutoff, k-point, pseudopotential and
    # version changes are tested on qe task keys in tests/unit/physics/test_task_keys.py.)
    text = (SAMPLES / "h2_zpe.in").read_text()
    _run(client, text)
    other = _run(client, text, delta=0.02)
    assert other["progress"]["reused"] == 1
    assert engine_runs.count == 4 + 3  # H2 with symmetry: 4 of 13 points
