"""Namelist injection (docs/security.md): no string a user writes can set a key pw.x reads.

The attack: a string value whose quotes end early, so the rest of it is read by pw.x as
more ``key = value`` pairs (``outdir``, ``pseudo_dir``, ``calculation``...). The defence:
only allowlisted keys reach pw.x (``zpe_core.physics.namelists``), string values are limited to
safe characters and written with Fortran quoting, and the worker re-checks the spec.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import f90nml
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import require_or_skip
from tests.security.conftest import fake_pw, h2_input, namelist_text
from zpe_client.models import JobRequest, QeCalcSpec, TaskSpec
from zpe_core.engines.qe import SCF_CONV_THR_FACTOR, QeEngine
from zpe_core.errors import EngineError, InputError
from zpe_core.jobs.compute import compute_task
from zpe_core.physics.namelists import (
    NAMELIST_KEYS,
    PW_DEFAULT_CONV_THR_RY,
    SAFE_STRING,
    InputLimits,
    KeyRule,
    check_namelists,
)
from zpe_core.physics.plan import build_plan
from zpe_core.physics.qe_input import parse_qe_input, select_mobile
from zpe_core.settings import Settings

PSEUDO_DIR = "/usr/share/espresso/pseudo"
INJECTION = (
    'a\' outdir="{dir}" prefix="p" wfcdir="{dir}" pseudo_dir="{dir}" '
    'calculation="relax" tprnfor=.true. /'
)


def _reference_spec(text: str, pseudo_dir: Path) -> TaskSpec:
    parsed = parse_qe_input(text)
    plan = build_plan(
        parsed,
        select_mobile(parsed, None, max_mobile=64),
        JobRequest(input_text=text),
        engine="qe",
        engine_version="qe-fake",
        pseudo_dir=str(pseudo_dir),
    )
    return plan.tasks[0].spec


def _pseudo_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pseudo"
    directory.mkdir(exist_ok=True)
    (directory / "H.pbe-kjpaw.UPF").write_text("<UPF/>\n")
    return directory


def _written_input(spec: TaskSpec, tmp_path: Path, pseudo_dir: Path) -> tuple[str, Path]:
    """What the engine hands pw.x for ``spec`` (a fake pw.x that fails at once)."""
    workdir = tmp_path / "work"
    engine = QeEngine(fake_pw(tmp_path / "bin", "exit 3"), str(pseudo_dir), 10.0, version="qe-fake")
    with pytest.raises(EngineError):
        engine.compute(spec, workdir)
    return (workdir / "espresso.pwi").read_text(), workdir


def _expected(workdir: Path, pseudo_dir: Path, user: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The namelists the engine means pw.x to read: the user's passed keys plus its own."""
    control = {
        "calculation": "scf",
        "tprnfor": True,
        "outdir": str(workdir / "out"),
        "prefix": "zpe",
        "disk_io": "none",
        "pseudo_dir": str(pseudo_dir),
    }
    expected: dict[str, dict[str, Any]] = {
        "control": {**user.get("control", {}), **control},
        "system": {**user.get("system", {}), "ibrav": 0, "nat": 2, "ntyp": 1},
        "electrons": dict(user.get("electrons", {})),
    }
    # The engine owns the threshold too: every SCF converges SCF_CONV_THR_FACTOR tighter.
    given = expected["electrons"].pop("conv_thr", PW_DEFAULT_CONV_THR_RY)
    expected["electrons"]["conv_thr"] = float(given) * SCF_CONV_THR_FACTOR
    return {k: v for k, v in expected.items() if v}


def _parsed_back(pw_input: str) -> dict[str, dict[str, Any]]:
    nml = f90nml.reads(namelist_text(pw_input))
    return {name: dict(values) for name, values in nml.todict().items() if values}


def test_the_issue_repro_cannot_move_outdir(tmp_path: Path) -> None:
    attacker = tmp_path / "attacker"
    text = h2_input(control=f'  title = "{INJECTION.format(dir=attacker)}"\n')
    pseudo_dir = _pseudo_dir(tmp_path)
    pw_input, workdir = _written_input(_reference_spec(text, pseudo_dir), tmp_path, pseudo_dir)
    back = _parsed_back(pw_input)
    assert back["control"]["outdir"] == str(workdir / "out")
    assert back["control"]["pseudo_dir"] == str(pseudo_dir)
    assert back["control"]["calculation"] == "scf"
    assert "wfcdir" not in back["control"]
    assert str(attacker) not in pw_input


@pytest.mark.parametrize(
    ("section", "line", "key"),
    [
        ("system", "  smearing = \"mv' outdir='/tmp/x' /\"\n", "smearing"),
        # A string over two lines is not one value to the reader: its tail is a bad line.
        ("electrons", "  mixing_mode = 'plain\n  outdir = /tmp/x'\n", "outdir"),
        ("system", '  occupations = "smearing\\", outdir=\'/tmp/x"\n', "occupations"),
    ],
)
def test_unsafe_strings_in_passed_keys_are_refused(section: str, line: str, key: str) -> None:
    with pytest.raises(InputError) as info:
        parse_qe_input(h2_input(**{section: line}))
    assert info.value.code in ("unsafe_namelist_value", "bad_namelist")
    assert key in info.value.message


@pytest.mark.parametrize(
    ("section", "line", "key"),
    [
        ("control", "  lfcp = .true.\n", "lfcp"),
        ("system", "  nqx1 = 4\n", "nqx1"),
        ("system", "  starting_charge(1) = 0.5\n", "starting_charge(1)"),
        ("electrons", "  efield = 0.1\n", "efield"),
        ("control", "  outdir_extra = 'x'\n", "outdir_extra"),
    ],
)
def test_unknown_keys_are_refused_naming_the_key(section: str, line: str, key: str) -> None:
    with pytest.raises(InputError) as info:
        parse_qe_input(h2_input(**{section: line}))
    assert info.value.code == "unknown_namelist_key"
    assert key in info.value.message


def test_unknown_key_answers_422_naming_it(client: Any) -> None:
    answer = client.post("/calc/zpe/jobs", json={"input_text": h2_input(system="  nqx1 = 2\n")})
    assert answer.status_code == 422
    assert answer.json()["code"] == "unknown_namelist_key"
    assert "nqx1" in answer.json()["detail"]


def test_the_worker_rechecks_a_tampered_spec(tmp_path: Path) -> None:
    """A spec the control plane never planned (a tampered store record) is refused."""
    pseudo_dir = _pseudo_dir(tmp_path)
    spec = _reference_spec(h2_input(), pseudo_dir)
    assert spec.qe is not None
    tampered = spec.model_copy(deep=True)
    assert tampered.qe is not None
    tampered.qe.input_data["system"]["smearing"] = "mv' outdir='/tmp/evil"
    tampered.qe.input_data["control"]["wfcdir"] = "/tmp/evil"
    tampered.qe.input_data["control"]["lfcp"] = True
    worker = Settings(
        pw_command=fake_pw(tmp_path / "bin", "exit 3"),
        qe_version="qe-fake",
        pseudo_dir=str(pseudo_dir),
        warm_start=False,
        scratch_dir=str(tmp_path),
    )
    with pytest.raises(EngineError) as info:
        compute_task(tampered, worker)
    assert (info.value.code, info.value.retryable) == ("task_spec_refused", False)
    assert "lfcp" in info.value.message or "smearing" in info.value.message


# --------------------------------------------------------------- property: f90nml round trip

_ANY_TEXT = st.one_of(
    st.text(max_size=70),
    st.text(alphabet=st.sampled_from("abc XYZ019_.+-()'*:;/!&,=\"\\\n"), max_size=70),
)
_VALUE = {
    bool: st.booleans(),
    int: st.one_of(st.integers(0, 100), st.integers(-(2**40), 2**40)),
    float: st.one_of(
        st.floats(-1e6, 1e6, allow_nan=False),
        st.floats(0, 100),
        st.floats(allow_nan=True, allow_infinity=True),
    ),
    str: st.one_of(
        st.from_regex(SAFE_STRING, fullmatch=True),  # accepted, quotes and all
        st.from_regex(SAFE_STRING, fullmatch=True),
        _ANY_TEXT,
    ),
}


def _value(rule: KeyRule) -> st.SearchStrategy[Any]:
    if rule.choices is not None:
        return st.one_of(st.sampled_from(sorted(rule.choices)), _ANY_TEXT)
    return _VALUE[rule.kind]


@st.composite
def user_namelists(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    """Namelists of allowlisted keys (any role) with any value, plus sometimes a stray key."""
    out: dict[str, dict[str, Any]] = {}
    for section, rules in NAMELIST_KEYS.items():
        names = draw(st.lists(st.sampled_from(sorted(rules)), max_size=4, unique=True))
        out[section] = {name: draw(_value(rules[name])) for name in names}
    if draw(st.integers(0, 4)) == 0:
        stray = draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True))
        out["control"].setdefault(stray, "x")
    return out


def _spec(input_data: dict[str, dict[str, Any]]) -> TaskSpec:
    return TaskSpec(
        engine="qe",
        engine_version="qe-fake",
        symbols=["H", "H"],
        positions=[[3.0, 3.0, 2.625], [3.0, 3.0, 3.375]],
        cell=[[6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]],
        pbc=[True, True, True],
        qe=QeCalcSpec(input_data=input_data, pseudopotentials={"H": "H.pbe-kjpaw.UPF"}),
    )


@settings(
    max_examples=int(os.environ.get("ZPE_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(user_namelists())
def test_every_accepted_value_reaches_pwx_exactly(
    tmp_path_factory: pytest.TempPathFactory, namelists: dict[str, dict[str, Any]]
) -> None:
    try:
        passed = check_namelists(namelists, InputLimits())
    except InputError as exc:
        assert exc.code in (
            "unknown_namelist_key",
            "unsafe_namelist_value",
            "unsupported_namelist_value",
            "bad_namelist",
            "limit_exceeded",
            "spin_polarized_unsupported",
        )
        return
    event("accepted")
    tmp_path = tmp_path_factory.mktemp("prop")
    pseudo_dir = _pseudo_dir(tmp_path)
    pw_input, workdir = _written_input(_spec(namelists), tmp_path, pseudo_dir)
    back = _parsed_back(pw_input)
    expected = _expected(workdir, pseudo_dir, passed)
    assert back.keys() == expected.keys(), pw_input
    for section, values in expected.items():
        assert back[section].keys() == values.keys(), pw_input
        for key, value in values.items():
            got = back[section][key]
            assert got == value and type(got) is type(value), (key, got, value)
    shutil.rmtree(tmp_path, ignore_errors=True)


# --------------------------------------------------------------- real pw.x


@pytest.mark.pwx
def test_real_pwx_writes_nothing_outside_the_task_scratch(tmp_path: Path) -> None:
    require_or_skip(shutil.which("pw.x") is not None, "pw.x")
    require_or_skip(Path(PSEUDO_DIR, "H.pbe-kjpaw.UPF").is_file(), "H.pbe-kjpaw.UPF")
    attacker = tmp_path / "attacker"
    attacker.mkdir()
    text = h2_input(control=f'  title = "{INJECTION.format(dir=attacker)}"\n')
    spec = _reference_spec(text, Path(PSEUDO_DIR))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    worker = Settings(
        qe_version=None,
        pseudo_dir=PSEUDO_DIR,
        warm_start=False,
        scratch_dir=str(scratch),
        task_timeout_seconds=300.0,
    )
    spec = spec.model_copy(update={"engine_version": QeEngine("pw.x", PSEUDO_DIR, 60).version()})
    result = compute_task(spec, worker, task_id="tinjection")
    assert math.isfinite(result.energy_ev)
    assert list(attacker.iterdir()) == [], "pw.x wrote into the attacker's directory"
    assert list(scratch.iterdir()) == [], "the task scratch is removed after the task"
