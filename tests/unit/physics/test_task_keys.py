"""Task keys (DESIGN.md core idea 2): whatever changes forces changes the key (a
cache miss); what cannot change forces (masses, file options, the warm-start hint,
keys the engine replaces) does not."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from zpe_client.models import JobRequest
from zpe_core.errors import InputError
from zpe_core.physics.plan import build_plan, task_key
from zpe_core.physics.qe_input import parse_qe_input, select_mobile

BASE = """\
&CONTROL
  calculation = 'scf'
  prefix      = 'h2o'
  pseudo_dir  = '/usr/share/espresso/pseudo'
  outdir      = './tmp'
  tprnfor     = .true.
/
&SYSTEM
  ibrav     = 1
  celldm(1) = 18.897261246
  nat       = 3
  ntyp      = 2
  ecutwfc   = 50.0
  ecutrho   = 400.0
/
&ELECTRONS
  conv_thr = 1.0d-10
/
ATOMIC_SPECIES
  O  15.9994  O.pbe-kjpaw.UPF
  H  1.00794  H.pbe-kjpaw.UPF
ATOMIC_POSITIONS angstrom
  O  5.000000  5.000000  5.300000
  H  5.765412  5.000000  4.704143
  H  4.234588  5.000000  4.704143
K_POINTS gamma
"""


@pytest.fixture
def pseudo_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pseudo"
    directory.mkdir()
    (directory / "O.pbe-kjpaw.UPF").write_text("<UPF> oxygen v1 </UPF>\n")
    (directory / "H.pbe-kjpaw.UPF").write_text("<UPF> hydrogen v1 </UPF>\n")
    return directory


def keys(
    text: str,
    pseudo_dir: Path,
    *,
    mobile: list[int] | None = None,
    version: str = "qe-6.7MaX",
    engine: str = "qe",
) -> list[str]:
    """The task keys of a job, in plan order (the reference first)."""
    parsed = parse_qe_input(text)
    request = JobRequest(input_text=text, mobile=mobile)
    chosen = select_mobile(parsed, mobile, max_mobile=64)
    plan = build_plan(
        parsed,
        chosen,
        request,
        engine=engine,
        engine_version=version,
        pseudo_dir=str(pseudo_dir),
    )
    return [t.task_id for t in plan.tasks]


def _set(text: str, section: str, line: str) -> str:
    """Add ``line`` to the end of ``&section``."""
    pattern = re.compile(rf"(&{section}\n(?:.*\n)*?)/\n", re.IGNORECASE)
    new, count = pattern.subn(lambda m: m.group(1) + f"  {line}\n/\n", text, count=1)
    assert count == 1
    return new


def _replace(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


SMEARING = "occupations = 'smearing'\n  smearing = 'mv'\n  degauss = 0.01"
MAGNETIC = "nspin = 2\n  starting_magnetization(1) = 0.5"

# Each of these reaches pw.x and may change the forces: every task key must change.
FORCE_CHANGES: dict[str, Callable[[str], str]] = {
    "ecutwfc": lambda t: _replace(t, "ecutwfc   = 50.0", "ecutwfc   = 45.0"),
    "ecutrho": lambda t: _replace(t, "ecutrho   = 400.0", "ecutrho   = 360.0"),
    "kpoint_grid": lambda t: _replace(t, "K_POINTS gamma", "K_POINTS automatic\n 1 1 1 0 0 0"),
    "conv_thr": lambda t: _replace(t, "conv_thr = 1.0d-10", "conv_thr = 1.0d-8"),
    "smearing": lambda t: _set(t, "SYSTEM", SMEARING),
    "input_dft": lambda t: _set(t, "SYSTEM", "input_dft = 'BLYP'"),
    "tot_charge": lambda t: _set(t, "SYSTEM", "tot_charge = 1.0"),
    "nbnd": lambda t: _set(t, "SYSTEM", "nbnd = 8"),
    "assume_isolated": lambda t: _set(t, "SYSTEM", "assume_isolated = 'mt'"),
    "vdw_corr": lambda t: _set(t, "SYSTEM", "vdw_corr = 'grimme-d3'"),
    "cell": lambda t: _replace(t, "celldm(1) = 18.897261246", "celldm(1) = 19.0"),
    "a_position": lambda t: _replace(t, "H  4.234588", "H  4.234589"),
    "pseudo_name": lambda t: _replace(t, "H  1.00794  H.pbe-kjpaw.UPF", "H  1.00794  H.pz.UPF"),
}


@pytest.mark.parametrize("name", sorted(FORCE_CHANGES))
def test_a_change_that_reaches_pwx_misses_the_cache(name: str, pseudo_dir: Path) -> None:
    (pseudo_dir / "H.pz.UPF").write_text("<UPF> hydrogen lda </UPF>\n")
    before = keys(BASE, pseudo_dir)
    after = keys(FORCE_CHANGES[name](BASE), pseudo_dir)
    assert len(before) == len(after) == 19
    assert not set(before) & set(after), name


def test_each_smearing_value_has_its_own_key(pseudo_dir: Path) -> None:
    # Spin-polarised inputs are refused at parsing (qe_input), so they never get a key.
    with pytest.raises(InputError):
        keys(_set(BASE, "SYSTEM", MAGNETIC), pseudo_dir)
    smear = _set(BASE, "SYSTEM", SMEARING)
    assert keys(smear, pseudo_dir)[0] != keys(smear.replace("0.01", "0.02"), pseudo_dir)[0]


def test_kpoint_grid_and_shift_each_change_the_key(pseudo_dir: Path) -> None:
    grid = _replace(BASE, "K_POINTS gamma", "K_POINTS automatic\n 2 2 2 0 0 0")
    shifted = grid.replace("2 2 2 0 0 0", "2 2 2 1 1 1")
    denser = grid.replace("2 2 2 0 0 0", "3 2 2 0 0 0")
    assert len({keys(t, pseudo_dir)[0] for t in (BASE, grid, shifted, denser)}) == 4


def test_pseudopotential_file_content_changes_the_key(pseudo_dir: Path) -> None:
    before = keys(BASE, pseudo_dir)
    # Same file name, other content (an updated library): every key must change.
    (pseudo_dir / "H.pbe-kjpaw.UPF").write_text("<UPF> hydrogen v2 </UPF>\n")
    after = keys(BASE, pseudo_dir)
    assert not set(before) & set(after)
    (pseudo_dir / "H.pbe-kjpaw.UPF").write_text("<UPF> hydrogen v1 </UPF>\n")
    assert keys(BASE, pseudo_dir) == before


def test_engine_version_and_engine_change_the_key(pseudo_dir: Path) -> None:
    base = keys(BASE, pseudo_dir)
    assert not set(base) & set(keys(BASE, pseudo_dir, version="qe-7.2"))
    assert not set(base) & set(keys(BASE, pseudo_dir, engine="mock", version="mock-1"))


def test_a_fixed_atom_position_is_in_the_key(pseudo_dir: Path) -> None:
    fixed = _replace(
        BASE, "H  4.234588  5.000000  4.704143", "H  4.234588  5.000000  4.704143 0 0 0"
    )
    moved = _replace(fixed, "H  4.234588", "H  4.234600")
    before = keys(fixed, pseudo_dir)
    after = keys(moved, pseudo_dir)
    assert len(before) == len(after) == 13  # the fixed atom is not displaced...
    assert not set(before) & set(after)  # ...but where it sits changes every point


# These do not reach pw.x, or cannot change its forces: keys must stay equal.
NO_FORCE_CHANGES: dict[str, Callable[[str], str]] = {
    "mass_18O": lambda t: _replace(t, "O  15.9994", "O  17.9992"),
    "mass_D": lambda t: _replace(t, "H  1.00794", "H  2.01410"),
    "verbosity": lambda t: _set(t, "CONTROL", "verbosity = 'high'"),
    "outdir": lambda t: _replace(t, "outdir      = './tmp'", "outdir = '/scratch/me'"),
    "prefix": lambda t: _replace(t, "prefix      = 'h2o'", "prefix = 'water'"),
    "pseudo_dir": lambda t: _replace(t, "pseudo_dir  = '/usr/share/espresso/pseudo'", ""),
    "calculation": lambda t: _replace(t, "calculation = 'scf'", "calculation = 'relax'"),
    "disk_io": lambda t: _set(t, "CONTROL", "disk_io = 'low'"),
    "comment": lambda t: "! a comment\n" + t,
    "key_case": lambda t: _replace(t, "ecutwfc   = 50.0", "ECUTWFC   = 50.0"),
}


@pytest.mark.parametrize("name", sorted(NO_FORCE_CHANGES))
def test_what_cannot_change_forces_keeps_the_key(name: str, pseudo_dir: Path) -> None:
    assert keys(NO_FORCE_CHANGES[name](BASE), pseudo_dir) == keys(BASE, pseudo_dir)


def test_other_mobile_set_shares_the_reference_and_its_own_displacements(
    pseudo_dir: Path,
) -> None:
    every = keys(BASE, pseudo_dir)
    oxygen = keys(BASE, pseudo_dir, mobile=[0])
    hydrogen = keys(BASE, pseudo_dir, mobile=[1])
    assert oxygen[0] == hydrogen[0] == every[0]  # the undisplaced reference
    assert set(oxygen) <= set(every)  # O's six displacements are the same points
    assert set(oxygen) & set(hydrogen) == {every[0]}


def test_warm_start_hint_is_not_in_the_key(pseudo_dir: Path) -> None:
    parsed = parse_qe_input(BASE)
    request = JobRequest(input_text=BASE)
    plan = build_plan(
        parsed,
        [0, 1, 2],
        request,
        engine="qe",
        engine_version="qe-6.7MaX",
        pseudo_dir=str(pseudo_dir),
    )
    reference = plan.tasks[0]
    assert reference.displacement.name == "eq"
    assert {t.spec.reference_key for t in plan.tasks} == {reference.task_id}
    for planned in plan.tasks:
        assert task_key(planned.spec) == planned.task_id
        hinted = planned.spec.model_copy(update={"reference_key": "t" + "0" * 64})
        assert task_key(hinted) == planned.task_id
        assert task_key(planned.spec.model_copy(update={"reference_key": None})) == planned.task_id
