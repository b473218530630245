"""Thermochemistry against ASE's own classes, symmetry numbers, tabulated values, Eckart."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest
from ase import Atoms
from ase.build import molecule
from ase.optimize import BFGS
from ase.thermochemistry import HarmonicThermo, IdealGasThermo

from zpe_core.engines.mock import MockPotential, mock_energy_forces
from zpe_core.physics.analysis import (
    HC_EV_CM,
    Mode,
    VibrationResult,
    analyze,
    displaced_positions,
    displacements,
    rigid_body_overlaps,
)
from zpe_core.physics.thermochemistry import molecular_symmetry, thermochemistry

J_PER_EV_MOL = 96485.33212  # eV -> J/mol (N_A e)


def _forces(atoms: Atoms, indices: Sequence[int]) -> dict[str, npt.NDArray[np.float64]]:
    symbols = atoms.get_chemical_symbols()
    return {
        d.name: mock_energy_forces(symbols, displaced_positions(atoms.get_positions(), d, 0.01))[1]
        for d in displacements(indices, 2)
    }


def _relaxed(name: str) -> Atoms:
    atoms = molecule(name)
    atoms.calc = MockPotential()
    BFGS(atoms, logfile=None).run(fmax=1e-6, steps=1000)
    atoms.calc = None
    return atoms


def _free(atoms: Atoms, **kw: str) -> VibrationResult:
    indices = list(range(len(atoms)))
    return analyze(atoms, indices, 0.01, 2, _forces(atoms, indices), 298.15, True, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "sigma", "group"),
    [
        ("H2O", 2, "C2v"),
        ("NH3", 3, "C3v"),
        ("CH4", 12, "Td"),
        ("CO2", 2, "D0h"),
        ("C6H6", 12, "D6h"),
    ],
)
def test_rotational_symmetry_numbers(name: str, sigma: int, group: str) -> None:
    found = molecular_symmetry(molecule(name))
    assert found.symmetry_number == sigma
    assert found.point_group == group


def test_symmetry_ignores_the_box() -> None:
    # In a periodic cubic box (as in a pw.x input) the molecule keeps its own group.
    atoms = molecule("NH3")
    atoms.cell = [10.0, 10.0, 10.0]
    atoms.pbc = True
    atoms.center()
    assert molecular_symmetry(atoms).symmetry_number == 3
    # A distorted molecule loses its symmetry.
    atoms.positions[1, 0] += 0.05
    assert molecular_symmetry(atoms).symmetry_number == 1


@pytest.mark.parametrize("name", ["H2O", "NH3", "CO2"])
def test_ideal_gas_equals_a_direct_call_of_ase(name: str) -> None:
    atoms = molecule(name)
    atoms.cell = [12.0, 12.0, 12.0]
    atoms.pbc = True  # a pw.x cell: ASE's IdealGasThermo would refuse these atoms
    vib = _free(atoms)
    e_pot = -12.345
    thermo = thermochemistry(
        atoms, vib, potential_energy_ev=e_pot, temperature=400.0, pressure=2.0e5
    )
    counted = [HC_EV_CM * m.frequency_cm for m in vib.modes if m.counted]
    sigma = molecular_symmetry(atoms).symmetry_number
    ase_gas = IdealGasThermo(
        vib_energies=counted,
        geometry="linear" if vib.linear else "nonlinear",
        potentialenergy=e_pot,
        atoms=Atoms(atoms.get_chemical_symbols(), positions=atoms.positions),
        symmetrynumber=sigma,
        spin=0,
    )
    d = thermo.to_dict()
    assert d["model"] == "ideal_gas"
    assert d["symmetry_number"] == sigma
    assert d["pressure"] == 2.0e5
    assert abs(d["zpe_ev"] - ase_gas.get_ZPE_correction()) < 1e-9
    assert abs(d["zpe_ev"] - vib.zpe_ev) < 1e-9
    assert abs(d["potential_energy_ev"] - e_pot) < 1e-12
    assert abs(d["potential_energy_plus_zpe_ev"] - (e_pot + vib.zpe_ev)) < 1e-9
    assert abs(d["enthalpy_ev"] - ase_gas.get_enthalpy(400.0, verbose=False)) < 1e-9
    assert abs(d["entropy_ev_per_k"] - ase_gas.get_entropy(400.0, 2.0e5, verbose=False)) < 1e-12
    assert abs(d["gibbs_energy_ev"] - ase_gas.get_gibbs_energy(400.0, 2.0e5, verbose=False)) < 1e-9
    for row in thermo.table:
        t = row.temperature
        assert abs(row.energy_ev - ase_gas.get_enthalpy(t, verbose=False)) < 1e-9
        assert abs(row.free_energy_ev - ase_gas.get_gibbs_energy(t, 2.0e5, verbose=False)) < 1e-9
    assert 400.0 in [row.temperature for row in thermo.table]


def test_harmonic_equals_a_direct_call_of_ase() -> None:
    cu = [(0.0, 0.0, 0.0), (2.55, 0.0, 0.0), (1.275, 2.208, 0.0), (1.275, 0.736, -2.08)]
    atoms = Atoms("Cu4CO", positions=[*cu, (1.275, 0.736, 1.85), (1.275, 0.736, 2.98)])
    vib = analyze(atoms, [4, 5], 0.01, 2, _forces(atoms, [4, 5]), 298.15, False)
    thermo = thermochemistry(atoms, vib, potential_energy_ev=-3.0, temperature=298.15)
    counted = [HC_EV_CM * m.frequency_cm for m in vib.modes if m.counted]
    ase_harmonic = HarmonicThermo(vib_energies=counted, potentialenergy=-3.0)
    d = thermo.to_dict()
    assert d["model"] == "harmonic"
    assert "pressure" not in d and "symmetry_number" not in d and "gibbs_energy_ev" not in d
    assert abs(d["zpe_ev"] - ase_harmonic.get_ZPE_correction()) < 1e-9
    assert abs(d["internal_energy_ev"] - ase_harmonic.get_internal_energy(298.15, False)) < 1e-9
    assert abs(d["entropy_ev_per_k"] - ase_harmonic.get_entropy(298.15, False)) < 1e-12
    assert abs(d["helmholtz_energy_ev"] - ase_harmonic.get_helmholtz_energy(298.15, False)) < 1e-9
    for row in thermo.table:
        assert (
            abs(row.free_energy_ev - ase_harmonic.get_helmholtz_energy(row.temperature, False))
            < 1e-9
        )


def _tabulated(atoms: Atoms, freqs_cm: list[float], linear: bool) -> VibrationResult:
    """A result with the given vibrations and 5/6 zero rigid-body modes."""
    n_rigid = 5 if linear else 6
    signed = [0.0] * n_rigid + sorted(freqs_cm)
    modes = [
        Mode(index=i, frequency_cm=f, imaginary=False, counted=i >= n_rigid, energy_ev=HC_EV_CM * f)
        for i, f in enumerate(signed)
    ]
    return VibrationResult(
        modes=modes,
        zpe_ev=0.5 * HC_EV_CM * sum(freqs_cm),
        s_vib_jmol_k=0.0,
        temperature=298.15,
        free_molecule=True,
        linear=linear,
        excluded=n_rigid,
        hessian=np.zeros((3 * len(atoms), 3 * len(atoms))),
    )


def test_tabulated_water_and_carbon_dioxide() -> None:
    """NIST-JANAF standard entropies (298.15 K, 1 bar): H2O 188.835, CO2 213.785 J/(mol K),
    and H(298.15) - H(0) of H2O 9.904 kJ/mol, from experimental geometries and fundamentals
    (H2O: r 0.9578 Å, 104.48°, 3657/1595/3756 cm^-1; CO2: r 1.1600 Å, 667.4 x2/1333/2349)."""
    half = math.radians(104.48 / 2)
    water = Atoms(
        "OH2",
        positions=[
            (0, 0, 0),
            (0.9578 * math.sin(half), 0, 0.9578 * math.cos(half)),
            (-0.9578 * math.sin(half), 0, 0.9578 * math.cos(half)),
        ],
    )
    gas = thermochemistry(
        water,
        _tabulated(water, [3657.0, 1595.0, 3756.0], linear=False),
        potential_energy_ev=0.0,
        temperature=298.15,
        pressure=1.0e5,
    )
    assert gas.symmetry_number == 2
    assert gas.row.entropy_ev_per_k * J_PER_EV_MOL == pytest.approx(188.835, abs=0.3)
    h_minus_h0 = (gas.row.energy_ev - gas.zpe_ev) * J_PER_EV_MOL / 1000
    assert h_minus_h0 == pytest.approx(9.904, abs=0.05)

    co2 = Atoms("CO2", positions=[(0, 0, 0), (0, 0, 1.16), (0, 0, -1.16)])
    gas = thermochemistry(
        co2,
        _tabulated(co2, [667.4, 667.4, 1333.0, 2349.0], linear=True),
        potential_energy_ev=0.0,
        temperature=298.15,
        pressure=1.0e5,
    )
    assert (gas.geometry, gas.symmetry_number) == ("linear", 2)
    assert gas.row.entropy_ev_per_k * J_PER_EV_MOL == pytest.approx(213.785, abs=0.5)


def test_symmetry_number_and_pressure_from_the_request() -> None:
    atoms = molecule("H2O")
    vib = _free(atoms)
    found = thermochemistry(atoms, vib, potential_energy_ev=0.0, temperature=298.15)
    given = thermochemistry(
        atoms, vib, potential_energy_ev=0.0, temperature=298.15, symmetry_number=1
    )
    assert (found.symmetry_number, found.symmetry_number_source) == (2, "point group")
    assert (given.symmetry_number, given.symmetry_number_source) == (1, "request")
    # S_rot carries -k ln(sigma): sigma 1 instead of 2 adds k ln 2.
    k_b = 8.617330337217213e-05  # ASE's units.kB
    assert given.row.entropy_ev_per_k - found.row.entropy_ev_per_k == pytest.approx(
        k_b * math.log(2), rel=1e-9
    )
    assert found.pressure == 101325.0
    high = thermochemistry(atoms, vib, potential_energy_ev=0.0, temperature=298.15, pressure=1e6)
    assert high.row.entropy_ev_per_k < found.row.entropy_ev_per_k


@pytest.mark.parametrize("name", ["H2O", "NH3", "CO2", "CH4"])
def test_eckart_projection_zeroes_rigid_modes_and_keeps_vibrations(name: str) -> None:
    # Not at a stationary point of the mock potential: raw rigid-body modes are far from 0.
    unrelaxed = _free(molecule(name))
    assert unrelaxed.projected_frequencies_cm is not None
    n_rigid = unrelaxed.excluded
    assert all(f == 0.0 for f in sorted(unrelaxed.projected_frequencies_cm, key=abs)[:n_rigid])
    # At a stationary point the projection leaves the vibrations as they were.
    relaxed = _free(_relaxed(name))
    raw = sorted(relaxed.raw_frequencies_cm, key=abs)[n_rigid:]
    projected = sorted(relaxed.projected_frequencies_cm or [], key=abs)
    assert all(abs(f) < 1e-6 for f in projected[:n_rigid])
    np.testing.assert_allclose(sorted(projected[n_rigid:]), sorted(raw), rtol=0, atol=1e-3)


def test_projected_set_counts_when_asked_and_says_so() -> None:
    atoms = molecule("NH3")  # mock: the raw rotations come out at 427-465 cm^-1
    raw = _free(atoms)
    projected = _free(atoms, frequency_set="projected")
    assert raw.frequency_set == "raw" and projected.frequency_set == "projected"
    assert projected.frequencies_cm == projected.projected_frequencies_cm
    assert projected.zpe_ev == pytest.approx(
        0.5 * HC_EV_CM * sum(f for f in projected.projected_frequencies_cm or [] if f > 0)
    )
    assert raw.frequencies_cm == raw.raw_frequencies_cm
    assert projected.raw_frequencies_cm == raw.raw_frequencies_cm
    # Not a free molecule: nothing to project, the raw set is used.
    partial = analyze(
        atoms,
        [1, 2, 3],
        0.01,
        2,
        _forces(atoms, [1, 2, 3]),
        298.15,
        False,
        frequency_set="projected",
    )
    assert partial.frequency_set == "raw" and partial.projected_frequencies_cm is None


def test_mode_vectors_are_ases_and_rigid_overlap_flags_the_rigid_modes() -> None:
    atoms = molecule("H2O")
    vib = _free(atoms)
    assert vib.vectors is not None and vib.data is not None
    ase_modes = vib.data.get_modes()
    for i, vector in enumerate(vib.vectors):
        np.testing.assert_allclose(vector, ase_modes[i], atol=1e-12)
    projected = _free(atoms, frequency_set="projected")
    assert projected.vectors is not None
    shares = rigid_body_overlaps(projected.vectors, atoms, [0, 1, 2])
    assert all(s > 1 - 1e-9 for s in shares[:6])
    assert all(s < 1e-9 for s in shares[6:])
