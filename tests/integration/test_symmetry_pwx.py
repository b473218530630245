"""Symmetry-reduced plans with the real pw.x: H2O (small box, low cutoff) rebuilt from
10 of its 19 points gives the full plan's frequencies within 0.1 cm^-1, and the
reference's forces pass the symmetry check."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_or_skip
from zpe_client.models import JobRequest
from zpe_core.jobs.compute import compute_task
from zpe_core.physics.analysis import analyze
from zpe_core.physics.plan import build_plan
from zpe_core.physics.qe_input import parse_qe_input, select_mobile
from zpe_core.physics.symmetry import broken_by_reference, rebuild_job_forces, select_points
from zpe_core.settings import Settings

pytestmark = [pytest.mark.pwx, pytest.mark.slow]

PSEUDO_DIR = "/usr/share/espresso/pseudo"
H2O_SMALL = """\
&CONTROL
  calculation = 'scf'
/
&SYSTEM
  ibrav = 0, nat = 3, ntyp = 2
  ecutwfc = 20.0, ecutrho = 160.0
/
&ELECTRONS
  conv_thr = 1.0d-10
/
ATOMIC_SPECIES
  O  15.9994  O.pbe-kjpaw.UPF
  H  1.00794  H.pbe-kjpaw.UPF
CELL_PARAMETERS angstrom
  5.0 0.0 0.0
  0.0 5.0 0.0
  0.0 0.0 5.0
ATOMIC_POSITIONS angstrom
  O  2.500000  2.500000  2.800000
  H  3.265412  2.500000  2.204143
  H  1.734588  2.500000  2.204143
K_POINTS gamma
"""


def test_reduced_plan_matches_the_full_plan_with_pwx(tmp_path: Path) -> None:
    require_or_skip(shutil.which("pw.x") is not None, "pw.x (apt-get install quantum-espresso)")
    for name in ("O.pbe-kjpaw.UPF", "H.pbe-kjpaw.UPF"):
        require_or_skip(Path(PSEUDO_DIR, name).exists(), f"{name} (quantum-espresso-data)")
    parsed = parse_qe_input(H2O_SMALL)
    request = JobRequest(input_text=H2O_SMALL)
    mobile = select_mobile(parsed, None, max_mobile=64)
    plan = build_plan(
        parsed, mobile, request, engine="qe", engine_version="qe-test", pseudo_dir=PSEUDO_DIR
    )
    computed, record = select_points(plan, "auto")
    assert (len(computed), record.points_full) == (10, 19)

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # Cold starts: the comparison is about symmetry, not about warm-start bias.
    settings = Settings(
        qe_version="qe-test", pseudo_dir=PSEUDO_DIR, scratch_dir=str(scratch), warm_start=False
    )
    forces = {
        t.displacement.name: np.asarray(
            compute_task(t.spec, settings, task_id=t.task_id).forces_ev_per_a
        )
        for t in plan.tasks
    }
    assert broken_by_reference(record, forces["eq"], mobile) is None
    rebuilt = rebuild_job_forces({ref.name: forces[ref.name] for ref in computed}, record)
    assert sorted(rebuilt) == sorted(forces)

    def counted(points: dict[str, np.ndarray]) -> np.ndarray:
        vib = analyze(parsed.atoms, mobile, request.delta, 2, points, 298.15, True)
        return np.array([m.frequency_cm for m in vib.modes if m.counted])

    full, reduced = counted(forces), counted(rebuilt)
    assert len(full) == 3 and 1000 < full[0] < 2000 and full[2] > 3000, full
    print(f"H2O full {full} reduced {reduced} max diff {np.max(np.abs(reduced - full)):.2e}")
    assert np.max(np.abs(reduced - full)) < 0.1, (reduced, full)
