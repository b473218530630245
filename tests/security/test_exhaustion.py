"""Memory and CPU exhaustion by one request (docs/security.md): every size and cost is
capped before the work it would cause, and the answer says the limit.

Times are measured only loosely (a loaded CI machine is slow); what matters is that
the refusal comes from the cap (its code), not from running out of something.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import make_settings
from tests.security.conftest import fake_pw, h2_input
from zpe_api.main import create_app
from zpe_client.models import QeCalcSpec, TaskSpec
from zpe_core.engines.mock import MockEngine
from zpe_core.engines.qe import QeEngine
from zpe_core.errors import EngineError, InputError
from zpe_core.physics.qe_input import parse_qe_input

MIB = 1024 * 1024


def _many_atoms_input(nat: int | None) -> str:
    """An input of about 1 MiB made of ``H 0 0 0`` lines (~100k atoms), sized so that its
    JSON body (newlines escaped) still passes the request-size cap."""
    head = h2_input().split("ATOMIC_POSITIONS")[0]
    line = "  H 0 0 0\n"
    count = (MIB - len(head) - 200) // (len(line) + 1)
    text = head + "ATOMIC_POSITIONS angstrom\n" + line * count + "K_POINTS gamma\n"
    return text.replace("nat = 2", f"nat = {nat if nat is not None else count}")


@pytest.mark.parametrize(("nat", "code"), [(None, "too_many_atoms"), (2, "nat_mismatch")])
def test_a_mebibyte_of_atoms_is_refused_fast(
    client: TestClient, nat: int | None, code: str
) -> None:
    text = _many_atoms_input(nat)
    assert 0.9 * MIB < len(text.encode()) <= MIB
    start = time.monotonic()
    answer = client.post("/calc/zpe/jobs", json={"input_text": text})
    elapsed = time.monotonic() - start
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == code
    if code == "too_many_atoms":
        assert "200" in answer.json()["detail"]  # the default ZPE_MAX_ATOMS
    assert elapsed < 30.0  # minutes before the fix (a spec per task with every position)


def test_max_atoms_is_a_setting() -> None:
    text = h2_input()
    with pytest.raises(InputError) as info:
        parse_qe_input(text, limits=make_settings(max_atoms=1).input_limits)
    assert info.value.code == "too_many_atoms"
    assert "at most 1 atoms" in info.value.message


def test_a_huge_mobile_list_is_refused_fast(client: TestClient) -> None:
    mobile = [0] * 500_000
    start = time.monotonic()
    answer = client.post("/calc/zpe/jobs", json={"input_text": h2_input(), "mobile": mobile})
    elapsed = time.monotonic() - start
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "too_many_mobile"
    assert "500000 mobile atoms requested, the limit is 64" in answer.json()["detail"]
    assert elapsed < 30.0  # minutes of list.count before the fix


def test_the_job_cost_is_checked_before_planning() -> None:
    settings = make_settings(max_plan_positions=20)  # H2, 13 tasks x 2 atoms = 26
    with TestClient(create_app(settings)) as capped:
        answer = capped.post("/calc/zpe/jobs", json={"input_text": h2_input()})
        assert answer.status_code == 422
        assert answer.json()["code"] == "job_too_costly"
        assert "limit of 20 atom positions" in answer.json()["detail"]
        assert capped.get("/calc/zpe/jobs").json()["jobs"] == []  # nothing stored


@pytest.mark.parametrize(
    ("part", "line", "limit"),
    [
        ("system", "ecutwfc = 201", "200"),
        ("system", "ecutrho = 1601", "1600"),
        ("system", "nbnd = 2001", "2000"),
        ("electrons", "electron_maxstep = 501", "500"),
        ("system", "nr1 = 1001", "1000"),
        ("electrons", "mixing_ndim = 101", "100"),
        ("kpoints", "K_POINTS automatic\n 11 10 10 0 0 0", "1000"),
    ],
)
def test_each_bound_answers_422_with_its_limit(
    client: TestClient, part: str, line: str, limit: str
) -> None:
    if part == "kpoints":
        text = h2_input().replace("K_POINTS gamma", line)
    else:
        text = h2_input(**{part: f"  {line}\n"})
        if line.startswith("ecutwfc"):
            text = text.replace("ecutwfc = 25.0, ", "")
        if line.startswith("ecutrho"):
            text = text.replace("ecutrho = 200.0", "")
    answer = client.post("/calc/zpe/jobs", json={"input_text": text})
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "limit_exceeded"
    assert f"limit of {limit}" in answer.json()["detail"]


def test_bounds_are_settings(client: TestClient) -> None:
    text = h2_input(system="  nbnd = 50\n")
    assert client.post("/calc/zpe/parse", json={"input_text": text}).status_code == 200
    with TestClient(create_app(make_settings(max_nbnd=10))) as capped:
        answer = capped.post("/calc/zpe/parse", json={"input_text": text})
        assert answer.status_code == 422
        assert "limit of 10" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("input_dft = 'pbe0'", "unsupported_namelist_value"),
        ("input_dft = 'HSE'", "unsupported_namelist_value"),
        ("nqx1 = 8", "unknown_namelist_key"),
        ("ecutfock = 400", "unknown_namelist_key"),
        ("exx_fraction = 0.25", "unknown_namelist_key"),
    ],
)
def test_exact_exchange_is_refused(client: TestClient, line: str, code: str) -> None:
    answer = client.post("/calc/zpe/jobs", json={"input_text": h2_input(system=f"  {line}\n")})
    assert answer.status_code == 422
    assert answer.json()["code"] == code


def _spec(natoms: int, **qe: Any) -> TaskSpec:
    return TaskSpec(
        engine="mock",
        engine_version="mock-1",
        symbols=["H"] * natoms,
        positions=[[0.5 * i, 0.0, 0.0] for i in range(natoms)],
        cell=[[1000.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]],
        pbc=[True, True, True],
        qe=QeCalcSpec(
            input_data={"system": {"ecutwfc": 20.0}},
            pseudopotentials={"H": "H.pbe-kjpaw.UPF"},
            **qe,
        ),
    )


def test_the_mock_engine_has_a_timeout(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(EngineError) as info:
        MockEngine(timeout_seconds=0.05).compute(_spec(2000), tmp_path)
    assert (info.value.code, info.value.retryable) == ("engine_timeout", True)
    assert time.monotonic() - start < 10.0  # 2000 atoms: about a minute without it
    with pytest.raises(EngineError) as delayed:
        MockEngine(delay_seconds=5.0, timeout_seconds=0.1).compute(_spec(2), tmp_path)
    assert delayed.value.code == "engine_timeout"
    assert MockEngine(timeout_seconds=30.0).compute(_spec(2), tmp_path).energy_ev < 0


def test_pwx_runs_under_memory_and_file_size_rlimits(tmp_path: Path) -> None:
    report = tmp_path / "limits.txt"
    pw = fake_pw(tmp_path / "bin", f"ulimit -v > {report}\nulimit -f >> {report}\nexit 3")
    engine = QeEngine(pw, str(tmp_path), 10.0, version="v", max_memory_mb=3000, max_file_mb=7)
    spec = _spec(2).model_copy(update={"engine": "qe"})
    with pytest.raises(EngineError):
        engine.compute(spec, tmp_path / "work")
    virtual_kib, file_blocks = report.read_text().split()
    assert int(virtual_kib) == 3000 * 1024
    assert int(file_blocks) * 512 == 7 * MIB  # sh reports 512-byte blocks


def test_a_file_size_limit_hit_is_a_permanent_failure(tmp_path: Path) -> None:
    body = "exec head -c 3145728 /dev/zero > big"
    engine = QeEngine(
        fake_pw(tmp_path / "bin", body), str(tmp_path), 30.0, version="v", max_file_mb=1
    )
    with pytest.raises(EngineError) as info:
        engine.compute(_spec(2).model_copy(update={"engine": "qe"}), tmp_path / "work")
    assert (info.value.code, info.value.retryable) == ("engine_resource_limit", False)
