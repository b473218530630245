"""Engines: the mock potential, engine lookup, the qe engine's failure handling (fake pw.x)."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import numpy as np
import pytest

from zpe_client.models import QeCalcSpec, TaskSpec
from zpe_core.engines import ENGINE_NAMES, get_engine
from zpe_core.engines.mock import MockEngine, mock_energy_forces
from zpe_core.engines.qe import QeEngine, _prepare_input_data, classify_failure
from zpe_core.errors import ConfigurationError, EngineError
from zpe_core.settings import Settings

H2O_POSITIONS = [[0.0, 0.0, 0.119], [0.0, 0.763, -0.477], [0.0, -0.763, -0.477]]


def _spec(engine: str = "mock", **qe: object) -> TaskSpec:
    return TaskSpec(
        engine=engine,
        engine_version="x",
        symbols=["O", "H", "H"],
        positions=H2O_POSITIONS,
        cell=[[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]],
        pbc=[True, True, True],
        qe=QeCalcSpec(
            input_data={"system": {"ecutwfc": 30.0}},
            pseudopotentials={"O": "O.pbe-kjpaw.UPF", "H": "H.pbe-kjpaw.UPF"},
            **qe,  # type: ignore[arg-type]
        ),
    )


# ---------------------------------------------------------------- mock


def test_mock_engine_is_deterministic(tmp_path: Path) -> None:
    engine = MockEngine()
    first = engine.compute(_spec(), tmp_path)
    second = engine.compute(_spec(), tmp_path)
    assert first.forces_ev_per_a == second.forces_ev_per_a
    assert first.energy_ev == second.energy_ev
    assert (first.engine, first.engine_version) == ("mock", "mock-1")
    assert engine.version() == "mock-1"
    assert np.array(first.forces_ev_per_a).shape == (3, 3)


def test_mock_forces_are_minus_energy_gradient() -> None:
    rng = np.random.default_rng(7)
    symbols = ["Cu", "Cu", "C", "O", "H", "H"]
    positions = np.array(
        [
            [0, 0, 0],
            [2.5, 0, 0],
            [1.2, 0.3, 1.9],
            [1.2, 0.3, 3.05],
            [3.0, 1.0, 1.0],
            [3.3, 1.6, 1.3],
        ],
        dtype=float,
    ) + rng.normal(scale=0.05, size=(6, 3))
    _, forces = mock_energy_forces(symbols, positions)
    h = 1e-5
    numeric = np.zeros_like(forces)
    for i in range(len(symbols)):
        for k in range(3):
            plus, minus = positions.copy(), positions.copy()
            plus[i, k] += h
            minus[i, k] -= h
            numeric[i, k] = -(
                mock_energy_forces(symbols, plus)[0] - mock_energy_forces(symbols, minus)[0]
            ) / (2 * h)
    np.testing.assert_allclose(forces, numeric, atol=1e-6)
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-10)  # Newton's third law


def test_mock_rejects_coincident_atoms(tmp_path: Path) -> None:
    spec = _spec().model_copy(update={"positions": [[0, 0, 0], [0, 0, 0], [1, 0, 0]]})
    with pytest.raises(EngineError) as info:
        MockEngine().compute(spec, tmp_path)
    assert info.value.retryable is False


# ---------------------------------------------------------------- get_engine


def test_get_engine_by_name() -> None:
    settings = Settings(pw_command="mpirun -np 2 pw.x", qe_version="qe-test", pseudo_dir="/p")
    assert ENGINE_NAMES == ("qe", "mock")
    assert isinstance(get_engine("mock", settings), MockEngine)
    qe = get_engine("qe", settings)
    assert isinstance(qe, QeEngine)
    assert qe.pw_command == "mpirun -np 2 pw.x"
    assert qe.version() == "qe-test"  # configured: no pw.x probe


def test_get_engine_unknown_name() -> None:
    with pytest.raises(ConfigurationError):
        get_engine("vasp", Settings())


# ---------------------------------------------------------------- qe with fake pw.x


def _fake_pw(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-pw.x"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(script)


BANNER = 'echo "     Program PWSCF v.6.7MaX starts on 1Jan2026 at 0:00:00"'


def _run_fake(tmp_path: Path, body: str, timeout: float = 30.0) -> EngineError:
    engine = QeEngine(_fake_pw(tmp_path, body), str(tmp_path), timeout, version="qe-fake")
    with pytest.raises(EngineError) as info:
        engine.compute(_spec("qe"), tmp_path / "work")
    return info.value


def test_qe_not_converged_is_permanent(tmp_path: Path) -> None:
    err = _run_fake(
        tmp_path,
        f'{BANNER}\necho "     convergence NOT achieved after 100 iterations: stopping"\nexit 0',
    )
    assert (err.code, err.retryable) == ("scf_not_converged", False)
    assert err.output_tail is not None and "convergence NOT achieved" in err.output_tail


def test_qe_input_error_is_permanent(tmp_path: Path) -> None:
    err = _run_fake(
        tmp_path,
        f"{BANNER}\n"
        'echo " %%%%%%%%%%%%%%%%"\n'
        'echo "     Error in routine  readpp (1):"\n'
        'echo "     file /nowhere/X.UPF not found"\n'
        "exit 1",
    )
    assert (err.code, err.retryable) == ("pwx_input_error", False)
    assert "readpp" in err.message and "not found" in err.message


def test_qe_killed_by_signal_is_retryable(tmp_path: Path) -> None:
    err = _run_fake(tmp_path, f"{BANNER}\nkill -9 $$")
    assert (err.code, err.retryable) == ("engine_crashed", True)
    assert "SIGKILL" in err.message


def test_qe_timeout_is_retryable_and_kills_the_run(tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    start = time.monotonic()
    err = _run_fake(tmp_path, f"{BANNER}\nsleep 2\ntouch {marker}", timeout=0.3)
    assert (err.code, err.retryable) == ("engine_timeout", True)
    assert time.monotonic() - start < 1.8
    time.sleep(max(0.0, 2.5 - (time.monotonic() - start)))
    assert not marker.exists(), "the timed-out process group must be killed"


def test_qe_missing_executable(tmp_path: Path) -> None:
    engine = QeEngine(str(tmp_path / "no-such-pw.x"), str(tmp_path), 10.0)
    with pytest.raises(EngineError) as info:
        engine.compute(_spec("qe"), tmp_path / "work")
    assert (info.value.code, info.value.retryable) == ("engine_unavailable", False)
    assert engine.version() == "qe-unknown"


def test_qe_unknown_exit_status_is_retryable(tmp_path: Path) -> None:
    err = _run_fake(tmp_path, f"{BANNER}\nexit 3")
    assert (err.code, err.retryable) == ("engine_crashed", True)


def test_qe_empty_output_is_unreadable(tmp_path: Path) -> None:
    err = _run_fake(tmp_path, f"{BANNER}\nexit 0")
    assert (err.code, err.retryable) == ("engine_output_unreadable", True)


def test_qe_version_from_banner(tmp_path: Path) -> None:
    engine = QeEngine(_fake_pw(tmp_path, f"{BANNER}\nexit 1"), str(tmp_path), 10.0)
    assert engine.version() == "qe-6.7MaX"


def test_qe_input_written_by_ase(tmp_path: Path) -> None:
    # The fake pw.x fails, but ASE has written the input by then: check what pw.x would get.
    _run_fake(tmp_path, "exit 3")
    text = (tmp_path / "work" / "espresso.pwi").read_text()
    assert "K_POINTS gamma" in text
    assert "tprnfor          = .true." in text
    assert "calculation      = 'scf'" in text
    assert f"pseudo_dir       = '{tmp_path}'" in text


def test_qe_automatic_kpoints_with_offset(tmp_path: Path) -> None:
    engine = QeEngine(_fake_pw(tmp_path, "exit 3"), str(tmp_path), 10.0, version="v")
    with pytest.raises(EngineError):
        engine.compute(_spec("qe", kpts=[4, 4, 1], koffset=[1, 1, 0]), tmp_path / "work")
    text = (tmp_path / "work" / "espresso.pwi").read_text()
    assert "K_POINTS automatic\n4 4 1  1 1 0" in text


def test_prepare_input_data_owns_engine_keys(tmp_path: Path) -> None:
    prepared = _prepare_input_data(
        {
            "CONTROL": {"calculation": "relax", "outdir": "/home/user", "pseudo_dir": "/x"},
            "SYSTEM": {"ibrav": 1, "celldm(1)": 10.0, "nat": 3, "ecutwfc": 40.0},
        },
        tmp_path,
    )
    assert prepared["control"]["calculation"] == "scf"
    assert prepared["control"]["tprnfor"] is True
    assert prepared["control"]["outdir"] == str(tmp_path / "out")
    assert "pseudo_dir" not in prepared["control"]
    assert prepared["system"] == {"ecutwfc": 40.0}


def test_classify_failure_success_is_none() -> None:
    assert classify_failure("JOB DONE.", 0, timed_out=False, timeout=1.0) is None
    mpi_missing = "mpirun was unable to find the specified executable file"
    err = classify_failure(mpi_missing, 1, timed_out=False, timeout=1.0)
    assert err is not None and err.code == "engine_unavailable"
    io = classify_failure(
        "     Error in routine davcio (10):\n     error writing file", 1, timed_out=False, timeout=1
    )
    assert io is not None and (io.code, io.retryable) == ("engine_io_error", True)
