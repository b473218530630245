"""Displacements -> Hessian -> frequencies -> ZPE/entropy, checked against ASE's own Vibrations."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from ase import Atoms
from ase.build import molecule
from ase.vibrations import Vibrations

from zpe_core.engines.mock import MockPotential, mock_energy_forces
from zpe_core.physics.analysis import (
    HC_EV_CM,
    KB_EV_K,
    R_JMOL_K,
    analyze,
    displaced_positions,
    displacements,
    entropy_of_frequencies,
    is_linear,
    zpe_of_frequencies,
)


def _our_forces(
    atoms: Atoms, indices: Sequence[int], delta: float, nfree: int
) -> dict[str, npt.NDArray[np.float64]]:
    symbols = atoms.get_chemical_symbols()
    return {
        d.name: mock_energy_forces(symbols, displaced_positions(atoms.get_positions(), d, delta))[1]
        for d in displacements(indices, nfree)
    }


def _ase_frequencies(
    atoms: Atoms, indices: Sequence[int], delta: float, nfree: int, tmp: Path
) -> npt.NDArray[np.complex128]:
    work = atoms.copy()
    work.calc = MockPotential()
    vib = Vibrations(work, indices=list(indices), name=str(tmp / "vib"), delta=delta, nfree=nfree)
    vib.run()
    return np.asarray(vib.get_frequencies(), dtype=complex)


def _signed(freqs: npt.NDArray[np.complex128]) -> list[float]:
    return sorted(-abs(f.imag) if abs(f.imag) > abs(f.real) else f.real for f in freqs)


def _h2(r: float = 0.74) -> Atoms:
    return Atoms("H2", positions=[(0.0, 0.0, 0.0), (0.0, 0.0, r)])


def _slab_with_co() -> Atoms:
    # A tiny Cu cluster with CO on top: only C and O move (not a free molecule).
    cu = [(0.0, 0.0, 0.0), (2.55, 0.0, 0.0), (1.275, 2.208, 0.0), (1.275, 0.736, -2.08)]
    return Atoms("Cu4CO", positions=[*cu, (1.275, 0.736, 1.85), (1.275, 0.736, 2.98)])


@pytest.mark.parametrize(
    ("atoms", "indices", "nfree"),
    [
        (molecule("H2O"), [0, 1, 2], 2),
        (molecule("H2O"), [0, 1, 2], 4),
        (molecule("NH3"), [1, 2], 2),
        (_slab_with_co(), [4, 5], 2),
        (_slab_with_co(), [4, 5], 4),
    ],
    ids=["h2o", "h2o-nfree4", "nh3-partial", "cu-co-partial", "cu-co-partial-nfree4"],
)
def test_frequencies_match_ase_vibrations(
    atoms: Atoms, indices: list[int], nfree: int, tmp_path: Path
) -> None:
    delta = 0.01
    forces = _our_forces(atoms, indices, delta, nfree)
    ours = analyze(atoms, indices, delta, nfree, forces, temperature=298.15, free_molecule=False)
    theirs = _signed(_ase_frequencies(atoms, indices, delta, nfree, tmp_path))
    assert len(ours.modes) == 3 * len(indices)
    np.testing.assert_allclose(ours.frequencies_cm, theirs, rtol=0, atol=1e-6)
    assert ours.hessian.shape == (3 * len(indices), 3 * len(indices))


def test_displacement_names_and_order_match_ase(tmp_path: Path) -> None:
    atoms = molecule("H2O")
    for nfree in (2, 4):
        for indices in ([0, 1, 2], [2, 0]):
            vib = Vibrations(atoms, indices=indices, name=str(tmp_path / "v"), nfree=nfree)
            ase_names = [disp.name for disp, _ in vib.iterdisplace()]
            ours = displacements(indices, nfree)
            assert [d.name for d in ours] == ase_names
            assert len(ours) == 1 + 3 * len(indices) * nfree
    assert [d.name for d in displacements([0], 4)][:5] == ["eq", "0x-", "0x--", "0x+", "0x++"]


def test_displaced_positions_match_ase_bit_for_bit(tmp_path: Path) -> None:
    atoms = molecule("H2O")
    vib = Vibrations(atoms, indices=[0, 2], name=str(tmp_path / "v"), delta=0.013, nfree=4)
    ase_positions = {disp.name: a.get_positions() for disp, a in vib.iterdisplace()}
    for d in displacements([0, 2], 4):
        got = displaced_positions(atoms.get_positions(), d, 0.013)
        assert np.array_equal(got, ase_positions[d.name]), d.name
    eq = displacements([0], 2)[0]
    assert (eq.atom, eq.axis, eq.step) == (None, None, 0)


def test_zpe_of_one_1000_cm_mode() -> None:
    assert zpe_of_frequencies([1000.0]) == pytest.approx(0.0619920992, abs=1e-9)
    # Non-positive entries (imaginary modes reported as negative numbers) never count.
    assert zpe_of_frequencies([1000.0, -500.0, 0.0]) == pytest.approx(0.0619920992, abs=1e-9)


def test_mock_h2_frequency_near_reference() -> None:
    atoms = _h2()
    result = analyze(atoms, [0, 1], 0.01, 2, _our_forces(atoms, [0, 1], 0.01, 2), 298.15, True)
    counted = [m for m in result.modes if m.counted]
    assert len(counted) == 1
    assert counted[0].frequency_cm == pytest.approx(4401.0, abs=5.0)
    assert result.zpe_ev == pytest.approx(0.2728, abs=0.001)


@pytest.mark.parametrize(
    ("atoms", "linear", "excluded", "counted"),
    [
        (_h2(), True, 5, 1),
        (molecule("CO2"), True, 5, 4),
        (molecule("H2O"), False, 6, 3),
        (molecule("NH3"), False, 6, 6),
    ],
    ids=["h2", "co2", "h2o", "nh3"],
)
def test_free_molecule_excludes_rigid_body_modes(
    atoms: Atoms, linear: bool, excluded: int, counted: int
) -> None:
    n = len(atoms)
    indices = list(range(n))
    forces = _our_forces(atoms, indices, 0.01, 2)
    free = analyze(atoms, indices, 0.01, 2, forces, 298.15, free_molecule=True)
    assert free.linear is linear
    assert free.excluded == excluded
    assert sum(m.counted for m in free.modes) == counted
    assert len(free.modes) == 3 * n
    # The excluded ones are the lowest |frequency| modes.
    excluded_idx = free.excluded_modes()
    kept = [abs(m.frequency_cm) for m in free.modes if m.index not in excluded_idx]
    assert max(abs(free.modes[i].frequency_cm) for i in excluded_idx) <= min(kept)
    assert free.zpe_ev == pytest.approx(
        zpe_of_frequencies([m.frequency_cm for m in free.modes if m.counted])
    )

    bound = analyze(atoms, indices, 0.01, 2, forces, 298.15, free_molecule=False)
    assert bound.excluded == 0
    real_positive = [m for m in bound.modes if not m.imaginary and m.frequency_cm > 0]
    assert all(m.counted for m in real_positive)
    assert bound.zpe_ev > free.zpe_ev  # rotations (finite-difference residue) now count


def test_free_molecule_requires_all_atoms_mobile() -> None:
    atoms = molecule("H2O")
    forces = _our_forces(atoms, [0, 1], 0.01, 2)
    with pytest.raises(ValueError, match="every atom"):
        analyze(atoms, [0, 1], 0.01, 2, forces, 298.15, free_molecule=True)


def test_imaginary_mode_reported_and_not_counted() -> None:
    # H2 stretched to 1.15 Å sits past the Morse inflection point: negative curvature.
    atoms = _h2(1.15)
    forces = _our_forces(atoms, [0, 1], 0.01, 2)
    for free in (True, False):
        result = analyze(atoms, [0, 1], 0.01, 2, forces, 298.15, free_molecule=free)
        imaginary = [m for m in result.modes if m.imaginary]
        assert imaginary, "the imaginary stretch must be reported"
        stretch = min(result.modes, key=lambda m: m.frequency_cm)
        assert stretch.imaginary and stretch.frequency_cm < -100.0
        assert not stretch.counted and stretch.energy_ev == 0.0
        assert stretch.index not in result.excluded_modes()
        assert result.n_imaginary >= 1
        assert result.zpe_ev == pytest.approx(
            zpe_of_frequencies([m.frequency_cm for m in result.modes if m.counted])
        )
        assert len(result.modes) == 6
        as_dict = result.to_dict()
        assert as_dict["n_imaginary"] == result.n_imaginary
        assert any(m["imaginary"] and not m["excluded"] for m in as_dict["modes"])


def test_entropy_of_one_mode_closed_formula() -> None:
    nu, temperature = 1000.0, 500.0
    x = HC_EV_CM * nu / (KB_EV_K * temperature)
    expected = R_JMOL_K * (x / (math.exp(x) - 1.0) - math.log(1.0 - math.exp(-x)))
    assert entropy_of_frequencies([nu], temperature) == pytest.approx(expected, rel=1e-12)
    assert entropy_of_frequencies([nu, -300.0], temperature) == pytest.approx(expected, rel=1e-12)
    # Very stiff modes contribute nothing rather than overflowing.
    assert entropy_of_frequencies([1e7], 10.0) == 0.0


def test_entropy_in_analyze_uses_counted_modes() -> None:
    atoms = molecule("H2O")
    forces = _our_forces(atoms, [0, 1, 2], 0.01, 2)
    result = analyze(atoms, [0, 1, 2], 0.01, 2, forces, 400.0, free_molecule=True)
    counted = [m.frequency_cm for m in result.modes if m.counted]
    assert result.s_vib_jmol_k == pytest.approx(entropy_of_frequencies(counted, 400.0))
    assert result.temperature == 400.0


def test_is_linear() -> None:
    assert is_linear(molecule("CO2"))
    assert is_linear(_h2())
    assert not is_linear(molecule("H2O"))


def test_is_linear_of_a_molecule_in_a_periodic_box_says_nothing() -> None:
    boxed = molecule("H2O", vacuum=5.0, pbc=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ASE's "periodic boundary conditions are ignored"
        assert not is_linear(boxed)
    co2 = molecule("CO2", vacuum=5.0, pbc=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert is_linear(co2)
    assert not is_linear(molecule("NH3"))


def test_missing_or_bad_forces_are_rejected() -> None:
    atoms = _h2()
    forces = _our_forces(atoms, [0, 1], 0.01, 2)
    del forces["1z+"]
    with pytest.raises(ValueError, match="1z\\+"):
        analyze(atoms, [0, 1], 0.01, 2, forces, 298.15, False)
    forces = _our_forces(atoms, [0, 1], 0.01, 2)
    forces["0x-"] = np.full((2, 3), np.nan)
    with pytest.raises(ValueError, match="finite"):
        analyze(atoms, [0, 1], 0.01, 2, forces, 298.15, False)
    with pytest.raises(ValueError, match="duplicates"):
        displacements([0, 0], 2)
