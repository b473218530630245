"""Thermochemistry through the API (mock engine): normal modes and their files,
warnings, for a free molecule (H2O), an adsorbate (Cu(100) + CO) and a partly frozen NH3."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.thermochemistry import HarmonicThermo, IdealGasThermo
from ase.vibrations.data import VibrationsData
from fastapi.testclient import TestClient

from tests.api.conftest import SAMPLES, wait_for
from zpe_client.cli import _print_result
from zpe_core.engines.mock import mock_energy_forces
from zpe_core.physics.analysis import HC_EV_CM
from zpe_core.physics.artifacts import MODE_FRAMES
from zpe_core.physics.qe_input import parse_qe_input

IDEAL_GAS_NAMES = {
    "model",
    "temperature",
    "pressure",
    "symmetry_number",
    "potential_energy_ev",
    "zpe_ev",
    "enthalpy_ev",
    "entropy_ev_per_k",
    "gibbs_energy_ev",
}
HARMONIC_NAMES = {
    "model",
    "temperature",
    "potential_energy_ev",
    "zpe_ev",
    "internal_energy_ev",
    "entropy_ev_per_k",
    "helmholtz_energy_ev",
}


def _run(client: TestClient, sample: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    created = client.post(
        "/calc/zpe/jobs", json={"input_text": (SAMPLES / sample).read_text(), **extra}
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    assert wait_for(client, job_id)["state"] == "done"
    result: dict[str, Any] = client.get(f"/calc/zpe/jobs/{job_id}/result").json()
    return job_id, result


def _file(client: TestClient, job_id: str, kind: str) -> Any:
    response = client.get(f"/calc/zpe/jobs/{job_id}/files", params={"kind": kind})
    assert response.status_code == 200, response.text
    return response


def _reference_energy(sample: str) -> float:
    atoms = parse_qe_input((SAMPLES / sample).read_text()).atoms
    return float(mock_energy_forces(atoms.get_chemical_symbols(), atoms.positions)[0])


def _thermo_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_free_molecule_thermochemistry_modes_and_files(
    client: TestClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id, result = _run(client, "h2o_zpe.in")
    thermo = result["thermochemistry"]
    assert set(thermo) >= IDEAL_GAS_NAMES
    assert thermo["model"] == "ideal_gas"
    assert (thermo["symmetry_number"], thermo["pressure"]) == (2, 101325.0)
    assert result["frequency_set"] == "raw" and "raw" in result["frequency_set_note"]

    # ASE's VibrationsData JSON gives back the same frequencies and mode vectors.
    vib_file = tmp_path / "vib.json"
    vib_file.write_bytes(_file(client, job_id, "vibrations").content)
    data = VibrationsData.read(str(vib_file))
    signed = sorted(
        -abs(f.imag) if abs(f.imag) > abs(f.real) else f.real for f in data.get_frequencies()
    )
    np.testing.assert_allclose(result["freqs_cm"], signed, rtol=0, atol=1e-6)
    for mode, vector in zip(result["modes"], data.get_modes(), strict=True):
        np.testing.assert_allclose(mode["displacement"], vector, atol=1e-9)

    # Every figure equals a direct call of ASE's IdealGasThermo on the same modes and geometry.
    atoms = data.get_atoms()
    molecule = Atoms(atoms.numbers, positions=atoms.positions, masses=atoms.get_masses())
    e_pot = _reference_energy("h2o_zpe.in")
    counted = [HC_EV_CM * m["frequency_cm"] for m in result["modes"] if m["counted"]]
    ase_gas = IdealGasThermo(
        counted, "nonlinear", potentialenergy=e_pot, atoms=molecule, symmetrynumber=2, spin=0
    )
    t, p = 298.15, 101325.0
    assert abs(thermo["potential_energy_ev"] - e_pot) < 1e-9
    assert abs(thermo["zpe_ev"] - result["zpe_ev"]) < 1e-9
    assert abs(thermo["zpe_ev"] - ase_gas.get_ZPE_correction()) < 1e-9
    assert abs(thermo["enthalpy_ev"] - ase_gas.get_enthalpy(t, verbose=False)) < 1e-9
    assert abs(thermo["entropy_ev_per_k"] - ase_gas.get_entropy(t, p, verbose=False)) < 1e-12
    assert abs(thermo["gibbs_energy_ev"] - ase_gas.get_gibbs_energy(t, p, verbose=False)) < 1e-9

    # thermo.csv: T, H, S, G over a range that includes the job's temperature.
    table = _file(client, job_id, "thermo")
    assert table.headers["content-type"].startswith("text/csv")
    rows = _thermo_rows(table.text)
    assert list(rows[0]) == ["temperature_k", "enthalpy_ev", "entropy_ev_per_k", "gibbs_energy_ev"]
    assert len(rows) >= 20
    at_t = next(r for r in rows if float(r["temperature_k"]) == t)
    assert abs(float(at_t["gibbs_energy_ev"]) - thermo["gibbs_energy_ev"]) < 1e-9
    for row in rows[::5]:
        temp = float(row["temperature_k"])
        assert abs(float(row["gibbs_energy_ev"]) - ase_gas.get_gibbs_energy(temp, p, False)) < 1e-9

    # The modes animation: every mode, MODE_FRAMES frames each, readable by ASE.
    xyz = tmp_path / "modes.xyz"
    xyz.write_bytes(_file(client, job_id, "modes").content)
    frames = ase.io.read(str(xyz), index=":")
    assert len(frames) == len(result["modes"]) * MODE_FRAMES
    assert [int(f.info["mode"]) for f in frames[::MODE_FRAMES]] == list(range(9))
    np.testing.assert_allclose(frames[0].positions, atoms.positions, atol=1e-6)
    moved = frames[MODE_FRAMES * 8 + 3].positions - atoms.positions
    assert np.max(np.linalg.norm(moved, axis=1)) > 0.1

    # Eckart: the rigid-body modes are exactly zero, the vibrations stay.
    projected = result["projected_freqs_cm"]
    assert projected[:6] == [0.0] * 6
    np.testing.assert_allclose(projected[6:], result["freqs_cm"][6:], atol=0.05)
    assert result["warnings"] == []

    # The CLI prints the thermochemistry.
    _print_result(result)
    out = capsys.readouterr().out
    assert "E_elec + ZPE" in out and "G(298.15 K)" in out and "symmetry number 2" in out
    summary = _file(client, job_id, "summary").text
    assert f"{thermo['gibbs_energy_ev']:.6f} eV" in summary
    assert "projected (cm^-1)" in summary


def test_pressure_symmetry_number_and_frequency_set_from_the_request(client: TestClient) -> None:
    _, default = _run(client, "h2o_zpe.in")
    _, chosen = _run(
        client, "h2o_zpe.in", pressure=2.0e5, symmetry_number=1, frequency_set="projected"
    )
    thermo = chosen["thermochemistry"]
    assert (thermo["pressure"], thermo["symmetry_number"]) == (2.0e5, 1)
    assert thermo["symmetry_number_source"] == "request"
    assert chosen["frequency_set"] == "projected" and thermo["frequency_set"] == "projected"
    counted = [m["frequency_cm"] for m in chosen["modes"] if m["counted"]]
    np.testing.assert_allclose(counted, chosen["projected_freqs_cm"][6:])
    assert chosen["zpe_ev"] == pytest.approx(0.5 * HC_EV_CM * sum(counted), abs=1e-12)
    assert chosen["freqs_cm"] == default["freqs_cm"]  # ASE's raw set, whichever counts
    assert thermo["gibbs_energy_ev"] != default["thermochemistry"]["gibbs_energy_ev"]


@pytest.mark.parametrize(
    ("field", "value"), [("symmetry_number", 0), ("pressure", -1.0), ("frequency_set", "best")]
)
def test_bad_thermochemistry_options_are_422(client: TestClient, field: str, value: Any) -> None:
    body = {"input_text": (SAMPLES / "h2o_zpe.in").read_text(), field: value}
    response = client.post("/calc/zpe/jobs", json=body)
    assert response.status_code == 422, response.text
    assert field in response.text


def test_adsorbate_gets_harmonic_thermochemistry(client: TestClient, tmp_path: Path) -> None:
    job_id, result = _run(client, "cu_slab_co.in", mobile=[8, 9])
    thermo = result["thermochemistry"]
    assert set(thermo) >= HARMONIC_NAMES
    assert thermo["model"] == "harmonic"
    assert not {"pressure", "symmetry_number", "gibbs_energy_ev", "enthalpy_ev"} & set(thermo)
    assert result["projected_freqs_cm"] is None and result["frequency_set"] == "raw"
    e_pot = _reference_energy("cu_slab_co.in")
    counted = [HC_EV_CM * m["frequency_cm"] for m in result["modes"] if m["counted"]]
    ase_harmonic = HarmonicThermo(counted, potentialenergy=e_pot)
    assert abs(thermo["potential_energy_ev"] - e_pot) < 1e-9
    assert abs(thermo["zpe_ev"] - ase_harmonic.get_ZPE_correction()) < 1e-9
    assert (
        abs(thermo["internal_energy_ev"] - ase_harmonic.get_internal_energy(298.15, False)) < 1e-9
    )
    assert abs(thermo["entropy_ev_per_k"] - ase_harmonic.get_entropy(298.15, False)) < 1e-12
    assert (
        abs(thermo["helmholtz_energy_ev"] - ase_harmonic.get_helmholtz_energy(298.15, False)) < 1e-9
    )
    rows = _thermo_rows(_file(client, job_id, "thermo").text)
    assert list(rows[0]) == [
        "temperature_k",
        "internal_energy_ev",
        "entropy_ev_per_k",
        "helmholtz_energy_ev",
    ]
    # The mock's CO sits on a saddle for the frustrated translations: the result says so.
    imaginary = [m for m in result["modes"] if m["imaginary"]]
    assert imaginary and all(m["frequency_cm"] < -20 for m in imaginary)
    assert any("not a minimum" in w and "relax it first" in w for w in result["warnings"])
    summary = _file(client, job_id, "summary").text
    assert "WARNING:" in summary and "relax it first" in summary
    assert "F(298.15 K)" in summary
    # Modes of the two mobile atoms: vectors of two rows; the animation moves only C and O.
    assert all(np.shape(m["displacement"]) == (2, 3) for m in result["modes"])
    xyz = tmp_path / "modes.xyz"
    xyz.write_bytes(_file(client, job_id, "modes").content)
    frames = ase.io.read(str(xyz), index=":")
    assert len(frames) == 6 * MODE_FRAMES and len(frames[0]) == 10
    np.testing.assert_allclose(frames[3].positions[:8], frames[0].positions[:8], atol=1e-9)
    vib_file = tmp_path / "vib.json"
    vib_file.write_bytes(_file(client, job_id, "vibrations").content)
    assert list(VibrationsData.read(str(vib_file)).get_indices()) == [8, 9]


def test_partly_frozen_molecule_is_said_in_the_preview_and_the_result(client: TestClient) -> None:
    text = (SAMPLES / "nh3_zpe.in").read_text()
    preview = client.post("/calc/zpe/parse", json={"input_text": text, "mobile": [1, 2, 3]})
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert body["partly_frozen"] and "[0] are not mobile" in body["partly_frozen"]
    assert {"code": "partial_free_molecule", "message": body["partly_frozen"]} in body["warnings"]
    whole = client.post("/calc/zpe/parse", json={"input_text": text}).json()
    assert whole["partly_frozen"] is None

    _, result = _run(client, "nh3_zpe.in", mobile=[1, 2, 3])
    frozen = result["partly_frozen"]
    assert frozen["code"] == "partial_free_molecule"
    assert frozen["frozen_indices"] == [0]
    assert "counted in the ZPE" in frozen["note"]
    assert frozen["rigid_like_modes"] and frozen["rigid_like_zpe_ev"] > 0.05
    assert frozen["note"] in result["warnings"]
    assert result["thermochemistry"]["model"] == "harmonic"
    _, whole_result = _run(client, "nh3_zpe.in")
    assert whole_result["partly_frozen"] is None
    assert result["zpe_ev"] > whole_result["zpe_ev"]  # 0.804 against 0.741 eV with the mock


def test_unknown_file_kind_names_the_new_ones(client: TestClient) -> None:
    job_id, _ = _run(client, "h2_zpe.in")
    response = client.get(f"/calc/zpe/jobs/{job_id}/files", params={"kind": "spectrum"})
    assert response.status_code == 422
    assert "modes" in response.text and "thermo" in response.text and "vibrations" in response.text
