"""Warm starts with the real pw.x: H2 (small box, low cutoff) cold and warm give the
same frequencies within 1 cm^-1, and the warm displaced SCFs did start from the
reference's density (and took fewer iterations); NH3 (20 Ry): a displaced point's
forces do not depend on how its SCF started (the task-key promise)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_or_skip
from zpe_client.models import JobRequest, TaskResult
from zpe_core.jobs.compute import compute_task
from zpe_core.physics.analysis import analyze
from zpe_core.physics.plan import build_plan
from zpe_core.physics.qe_input import parse_qe_input, select_mobile
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


NH3_SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "nh3_zpe.in"
#: eV/A: the task-key promise (warm and cold forces of one key) at conv_thr 1e-10.
FORCE_TOLERANCE = 2e-5
#: Relative: 0.1 cm^-1 of a 1000 cm^-1 mode is 2e-4 of its force constant.
FORCE_CONSTANT_TOLERANCE = 2e-4


def test_nh3_forces_do_not_depend_on_how_the_scf_started(tmp_path: Path) -> None:
    """The task-key promise on NH3: a displaced point's forces computed warm
    (from the reference's density) and cold agree within FORCE_TOLERANCE, and so do the
    force constants of the N z +/- pair (the umbrella), on which a shared warm start
    used to lean the same way in both points."""
    require_or_skip(shutil.which("pw.x") is not None, "pw.x (apt-get install quantum-espresso)")
    require_or_skip(
        Path(PSEUDO_DIR, "N.pbe-kjpaw.UPF").exists(),
        "N.pbe-kjpaw.UPF (apt-get install quantum-espresso-data)",
    )
    text = NH3_SAMPLE.read_text().replace("ecutwfc = 50.0", "ecutwfc = 20.0")
    text = text.replace("ecutrho = 400.0", "ecutrho = 160.0")
    parsed = parse_qe_input(text)
    request = JobRequest(input_text=text)
    mobile = select_mobile(parsed, None, max_mobile=64)
    plan = build_plan(
        parsed, mobile, request, engine="qe", engine_version="qe-test", pseudo_dir=PSEUDO_DIR
    )
    tasks = {t.displacement.name: t for t in plan.tasks}
    pair = ["0z+", "0z-"]  # N along the C3 axis
    runs: dict[bool, dict[str, TaskResult]] = {}
    for warm in (True, False):
        settings = Settings(
            qe_version="qe-test",
            pseudo_dir=PSEUDO_DIR,
            scratch_dir=str(tmp_path),
            warm_start=warm,
            warm_start_dir=str(tmp_path / "warm"),
        )
        names = ["eq", *pair] if warm else pair
        runs[warm] = {n: compute_task(tasks[n].spec, settings, task_id=n) for n in names}
    assert all(runs[True][n].warm_started for n in pair)
    assert not any(runs[False][n].warm_started for n in pair)
    forces = {warm: {n: np.asarray(runs[warm][n].forces_ev_per_a) for n in pair} for warm in runs}
    worst = max(np.abs(forces[True][n] - forces[False][n]).max() for n in pair)
    assert worst < FORCE_TOLERANCE, worst
    # Force constant d2E/dz_N^2 (eV/A^2) from the pair: the bias did not cancel here.
    k = {w: -(forces[w]["0z+"][0, 2] - forces[w]["0z-"][0, 2]) / (2 * request.delta) for w in runs}
    assert abs(k[True] - k[False]) < FORCE_CONSTANT_TOLERANCE * abs(k[False]), k
