"""Warm starts with the real pw.x: H2 (small box, low cutoff) cold and warm give the
same frequencies within 1 cm^-1, and the warm displaced SCFs did start from the
reference's density (and took fewer iterations)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_or_skip
from zpe_core.analysis import analyze
from zpe_core.models import JobRequest, TaskResult
from zpe_core.plan import build_plan
from zpe_core.qe_input import parse_qe_input, select_mobile
from zpe_core.runner import compute_task
from zpe_core.settings import Settings

pytestmark = [pytest.mark.pwx, pytest.mark.slow]

PSEUDO_DIR = "/usr/share/espresso/pseudo"
H2_SMALL = """\
&CONTROL
  calculation = 'scf'
/
&SYSTEM
  ibrav = 0, nat = 2, ntyp = 1
  ecutwfc = 20.0, ecutrho = 160.0
/
&ELECTRONS
  conv_thr = 1.0d-10
/
ATOMIC_SPECIES
  H  1.00794  H.pbe-kjpaw.UPF
CELL_PARAMETERS angstrom
  6.0 0.0 0.0
  0.0 6.0 0.0
  0.0 0.0 6.0
ATOMIC_POSITIONS angstrom
  H  3.0  3.0  2.625
  H  3.0  3.0  3.375
K_POINTS gamma
"""


def test_warm_start_agrees_with_cold_start(tmp_path: Path) -> None:
    require_or_skip(shutil.which("pw.x") is not None, "pw.x (apt-get install quantum-espresso)")
    require_or_skip(
        Path(PSEUDO_DIR, "H.pbe-kjpaw.UPF").exists(),
        "H.pbe-kjpaw.UPF (apt-get install quantum-espresso-data)",
    )
    parsed = parse_qe_input(H2_SMALL)
    request = JobRequest(input_text=H2_SMALL)
    mobile = select_mobile(parsed, None, max_mobile=64)
    plan = build_plan(
        parsed, mobile, request, engine="qe", engine_version="qe-test", pseudo_dir=PSEUDO_DIR
    )
    assert plan.tasks[0].displacement.name == "eq"

    runs: dict[bool, dict[str, TaskResult]] = {}
    for warm in (False, True):
        scratch = tmp_path / f"scratch-{warm}"
        scratch.mkdir()
        settings = Settings(
            qe_version="qe-test",
            pseudo_dir=PSEUDO_DIR,
            scratch_dir=str(scratch),
            warm_start=warm,
            warm_start_dir=str(tmp_path / f"warm-{warm}"),
        )
        # The reference first, as the dispatcher orders it; then every displaced point.
        runs[warm] = {
            t.displacement.name: compute_task(t.spec, settings, task_id=t.task_id)
            for t in plan.tasks
        }
        assert list(scratch.iterdir()) == []  # only the warm cache outlives a task

    cold, warm_run = runs[False], runs[True]
    displaced = [name for name in cold if name != "eq"]
    assert not any(r.warm_started for r in cold.values())
    assert not warm_run["eq"].warm_started
    assert all(warm_run[name].warm_started for name in displaced)
    cold_iters = sum(cold[n].scf_iterations or 0 for n in displaced)
    warm_iters = sum(warm_run[n].scf_iterations or 0 for n in displaced)
    assert warm_iters < cold_iters, (warm_iters, cold_iters)

    freqs = {}
    for label, results in (("cold", cold), ("warm", warm_run)):
        forces = {name: np.asarray(r.forces_ev_per_a) for name, r in results.items()}
        vib = analyze(parsed.atoms, mobile, request.delta, request.nfree, forces, 298.15, True)
        freqs[label] = [m.frequency_cm for m in vib.modes if m.counted]
    assert len(freqs["cold"]) == 1
    assert 3500 < freqs["cold"][0] < 5000
    assert abs(freqs["warm"][0] - freqs["cold"][0]) < 1.0, freqs
