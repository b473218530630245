"""A real pw.x ZPE of H2 through the API, the in-process dispatcher and the file store."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import SAMPLES, make_settings
from tests.conftest import require_or_skip
from zpe_api.main import create_app

pytestmark = [pytest.mark.pwx, pytest.mark.slow]


def test_h2_zpe_with_real_pwx(tmp_path: Path) -> None:
    require_or_skip(shutil.which("pw.x") is not None, "pw.x (apt-get install quantum-espresso)")
    require_or_skip(
        Path("/usr/share/espresso/pseudo/H.pbe-kjpaw.UPF").exists(),
        "H.pbe-kjpaw.UPF (apt-get install quantum-espresso-data)",
    )
    settings = make_settings(
        store_url=f"file://{tmp_path / 'store'}",
        default_engine="qe",
        inprocess_concurrency=2,
        scratch_dir=str(tmp_path / "scratch"),
    )
    (tmp_path / "scratch").mkdir()
    with TestClient(create_app(settings)) as client:
        created = client.post(
            "/calc/zpe/jobs", json={"input_text": (SAMPLES / "h2_zpe.in").read_text()}
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        deadline = time.monotonic() + 900
        while True:
            status = client.get(f"/calc/zpe/jobs/{job_id}").json()
            if status["state"] in ("done", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, status
            time.sleep(1)
        assert status["state"] == "done", status
        result = client.get(f"/calc/zpe/jobs/{job_id}/result").json()
    counted = [m["frequency_cm"] for m in result["modes"] if m["counted"]]
    assert len(counted) == 1
    assert 4000 <= counted[0] <= 4500, result["freqs_cm"]
    assert 0.25 <= result["zpe_ev"] <= 0.29
    assert result["engine"] == "qe"
    assert result["engine_version"].startswith("qe-")
    # The Eckart projection puts the rotations (tens of i cm^-1 raw, off the
    # stationary point) at exactly 0 and keeps the stretch; H2 is D∞h, sigma 2.
    projected = result["projected_freqs_cm"]
    assert projected[:5] == [0.0] * 5, (result["freqs_cm"], projected)
    assert abs(projected[5] - counted[0]) < 0.01 * counted[0], (counted, projected)
    thermo = result["thermochemistry"]
    assert (thermo["model"], thermo["symmetry_number"], thermo["geometry"]) == (
        "ideal_gas",
        2,
        "linear",
    )
    assert abs(thermo["zpe_ev"] - result["zpe_ev"]) < 1e-9
    # Each task's scratch was removed; only the warm-start cache of the reference stays.
    left = [p.name for p in (tmp_path / "scratch").iterdir()]
    assert [name for name in left if not name.startswith("zpe-warm-")] == []
