"""The qe engine against the real pw.x: one small H2 SCF and one broken input."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from tests.conftest import require_or_skip
from zpe_client.models import QeCalcSpec, TaskSpec
from zpe_core.engines.qe import QeEngine
from zpe_core.errors import EngineError

PSEUDO_DIR = "/usr/share/espresso/pseudo"

pytestmark = pytest.mark.pwx


def _h2_spec(pseudo: str = "H.pbe-kjpaw.UPF") -> TaskSpec:
    return TaskSpec(
        engine="qe",
        engine_version="test",
        symbols=["H", "H"],
        positions=[[5.0, 5.0, 4.625], [5.0, 5.0, 5.375]],  # 0.75 Å bond along z
        cell=[[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]],
        pbc=[True, True, True],
        qe=QeCalcSpec(
            input_data={
                "control": {"calculation": "scf"},
                "system": {"ecutwfc": 30.0, "ecutrho": 240.0},
                "electrons": {"conv_thr": 1e-8},
            },
            pseudopotentials={"H": pseudo},
            kpts=None,  # Gamma
        ),
    )


@pytest.fixture
def engine() -> QeEngine:
    require_or_skip(shutil.which("pw.x") is not None, "pw.x")
    require_or_skip(Path(PSEUDO_DIR, "H.pbe-kjpaw.UPF").is_file(), "H.pbe-kjpaw.UPF")
    return QeEngine("pw.x", PSEUDO_DIR, timeout_seconds=300.0)


def test_h2_scf_energy_and_forces(engine: QeEngine, tmp_path: Path) -> None:
    result = engine.compute(_h2_spec(), tmp_path)
    assert math.isfinite(result.energy_ev) and result.energy_ev < 0.0
    (fx0, fy0, fz0), (fx1, fy1, fz1) = result.forces_ev_per_a
    assert fz0 * fz1 < 0.0, "forces along the bond act in opposite directions"
    assert abs(fz0 + fz1) < 1e-3
    assert max(abs(fx0), abs(fy0), abs(fx1), abs(fy1)) < 1e-3
    assert result.engine == "qe"
    assert result.engine_version.startswith("qe-")
    assert result.engine_version != "qe-unknown"
    assert result.scf_iterations is not None and result.scf_iterations > 0
    assert result.wall_seconds > 0.0


def test_missing_pseudopotential_is_a_permanent_error(engine: QeEngine, tmp_path: Path) -> None:
    with pytest.raises(EngineError) as info:
        engine.compute(_h2_spec(pseudo="H.does-not-exist.UPF"), tmp_path)
    assert info.value.retryable is False
    assert info.value.code == "pwx_input_error"
    assert info.value.output_tail
