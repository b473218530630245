"""Harmonic frequencies -> thermochemistry, by ASE's ``ase.thermochemistry``.

Free molecules get ``IdealGasThermo`` (translation, rotation, vibration; the
geometry from the structure, the rotational symmetry number from the point
group that ``molsym`` finds, spin 0 since spin-polarised inputs are refused);
everything else (adsorbates, anything with frozen atoms) gets ``HarmonicThermo``.
The modes that go in are the ones the ZPE counts (translations and rotations of
a free molecule excluded; imaginary modes left out, as ASE's
``ignore_imag_modes`` does), with the same energies as the result's ZPE.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ase import Atoms, units
from ase.thermochemistry import HarmonicThermo, IdealGasThermo

from zpe_core.physics.analysis import HC_EV_CM, VibrationResult

STANDARD_PRESSURE_PA = 101325.0
"""The request's default pressure (1 atm)."""

TABLE_TEMPERATURES_K = tuple(float(t) for t in range(50, 1001, 50))
"""The temperatures of ``thermo.csv`` (the request's own is added)."""

Geometry = Literal["monatomic", "linear", "nonlinear"]


@dataclass(frozen=True)
class PointGroupSymmetry:
    """A molecule's point group (Schoenflies, molsym's spelling) and rotational symmetry number."""

    point_group: str
    symmetry_number: int


def molecular_symmetry(atoms: Atoms) -> PointGroupSymmetry:
    """The point group of ``atoms`` as a free molecule, found by ``molsym``.

    The cell is ignored (a cubic box would hide most of the group from a
    space-group search); a single atom is ``Kh`` with symmetry number 1.
    """
    if len(atoms) == 1:
        return PointGroupSymmetry(point_group="Kh", symmetry_number=1)
    import molsym  # ~1 s to import: only the finishing of a job needs it

    mol = molsym.Molecule(atoms.numbers, atoms.positions / units.Bohr, atoms.get_masses())
    symtext = molsym.Symtext.from_molecule(mol)
    return PointGroupSymmetry(
        point_group=str(symtext.pg.str), symmetry_number=int(symtext.rotational_symmetry_number)
    )


def molecule_geometry(atoms: Atoms, linear: bool) -> Geometry:
    """ASE's ``geometry`` word for ``IdealGasThermo``."""
    if len(atoms) == 1:
        return "monatomic"
    return "linear" if linear else "nonlinear"


@dataclass(frozen=True)
class ThermoRow:
    """One temperature: U or H, S and F or G (eV, eV/K)."""

    temperature: float
    energy_ev: float  # H (ideal gas) or U (harmonic)
    entropy_ev_per_k: float
    free_energy_ev: float  # G (ideal gas) or F (harmonic)


@dataclass(frozen=True)
class Thermochemistry:
    """The figures of one job at its temperature (and pressure), plus a table over T."""

    model: Literal["ideal_gas", "harmonic"]
    temperature: float
    potential_energy_ev: float
    zpe_ev: float
    row: ThermoRow
    table: list[ThermoRow]
    frequency_set: str
    pressure: float | None = None
    symmetry_number: int | None = None
    symmetry_number_source: str | None = None
    point_group: str | None = None
    geometry: Geometry | None = None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The result's ``thermochemistry`` object (its names are part of the API: keep them)."""
        out: dict[str, Any] = {"model": self.model, "temperature": self.temperature}
        if self.model == "ideal_gas":
            out |= {
                "pressure": self.pressure,
                "symmetry_number": self.symmetry_number,
                "symmetry_number_source": self.symmetry_number_source,
                "point_group": self.point_group,
                "geometry": self.geometry,
            }
        out |= {
            "potential_energy_ev": self.potential_energy_ev,
            "zpe_ev": self.zpe_ev,
            "potential_energy_plus_zpe_ev": self.potential_energy_ev + self.zpe_ev,
        }
        energy, free = _column_names(self.model)
        out |= {
            energy: self.row.energy_ev,
            "entropy_ev_per_k": self.row.entropy_ev_per_k,
            free: self.row.free_energy_ev,
            "frequency_set": self.frequency_set,
        }
        return out

    def csv_header(self) -> list[str]:
        energy, free = _column_names(self.model)
        return ["temperature_k", energy, "entropy_ev_per_k", free]


def _column_names(model: str) -> tuple[str, str]:
    if model == "ideal_gas":
        return "enthalpy_ev", "gibbs_energy_ev"
    return "internal_energy_ev", "helmholtz_energy_ev"


def vibrational_energies(vib: VibrationResult) -> list[complex]:
    """The energies (eV) handed to ASE: every mode not excluded as a translation/rotation;
    imaginary ones as ``1j * |h c nu|`` so that ASE itself leaves them out."""
    excluded = vib.excluded_modes()
    out: list[complex] = []
    for m in vib.modes:
        if m.index in excluded:
            continue
        energy = HC_EV_CM * abs(m.frequency_cm)
        out.append(complex(0.0, energy) if m.imaginary else complex(energy, 0.0))
    return out


def thermochemistry(
    atoms: Atoms,
    vib: VibrationResult,
    *,
    potential_energy_ev: float,
    temperature: float,
    pressure: float = STANDARD_PRESSURE_PA,
    symmetry_number: int | None = None,
    temperatures: Sequence[float] = TABLE_TEMPERATURES_K,
) -> Thermochemistry:
    """``IdealGasThermo`` for a free molecule, ``HarmonicThermo`` otherwise.

    ``symmetry_number`` overrides the one of the point group (ideal gas only).
    ``atoms`` is the structure with its masses; a non-periodic copy goes to ASE,
    which refuses periodic atoms for the ideal gas.
    """
    if temperature <= 0.0 or pressure <= 0.0:
        raise ValueError("temperature and pressure must be positive")
    energies = vibrational_energies(vib)
    grid = sorted({float(t) for t in temperatures} | {float(temperature)})
    with warnings.catch_warnings():
        # ASE warns "n imag modes removed": the result reports imaginary modes itself.
        warnings.simplefilter("ignore", UserWarning)
        if vib.free_molecule:
            molecule = Atoms(atoms.numbers, positions=atoms.positions, masses=atoms.get_masses())
            notes: tuple[str, ...] = ()
            try:
                found = molecular_symmetry(molecule)
            except Exception as exc:  # a library's failure must not fail the job
                found = PointGroupSymmetry(point_group="unknown", symmetry_number=1)
                if symmetry_number is None:
                    notes = (
                        f"the point group could not be determined ({exc}); symmetry number 1 "
                        "was assumed: give symmetry_number in the request",
                    )
            sigma = symmetry_number if symmetry_number is not None else found.symmetry_number
            geometry = molecule_geometry(molecule, vib.linear)
            gas = IdealGasThermo(
                vib_energies=energies,
                geometry=geometry,
                potentialenergy=potential_energy_ev,
                atoms=molecule,
                symmetrynumber=sigma,
                spin=0,
                vib_selection="exact",
                ignore_imag_modes=True,
            )
            rows = [
                ThermoRow(
                    temperature=t,
                    energy_ev=float(gas.get_enthalpy(t, verbose=False)),
                    entropy_ev_per_k=float(gas.get_entropy(t, pressure, verbose=False)),
                    free_energy_ev=float(gas.get_gibbs_energy(t, pressure, verbose=False)),
                )
                for t in grid
            ]
            return Thermochemistry(
                model="ideal_gas",
                temperature=temperature,
                potential_energy_ev=potential_energy_ev,
                zpe_ev=float(gas.get_ZPE_correction()),
                row=rows[grid.index(float(temperature))],
                table=rows,
                frequency_set=vib.frequency_set,
                pressure=pressure,
                symmetry_number=sigma,
                symmetry_number_source="request" if symmetry_number is not None else "point group",
                point_group=found.point_group,
                geometry=geometry,
                warnings=notes,
            )
        harmonic = HarmonicThermo(
            vib_energies=energies, potentialenergy=potential_energy_ev, ignore_imag_modes=True
        )
        rows = [
            ThermoRow(
                temperature=t,
                energy_ev=float(harmonic.get_internal_energy(t, verbose=False)),
                entropy_ev_per_k=float(harmonic.get_entropy(t, verbose=False)),
                free_energy_ev=float(harmonic.get_helmholtz_energy(t, verbose=False)),
            )
            for t in grid
        ]
        return Thermochemistry(
            model="harmonic",
            temperature=temperature,
            potential_energy_ev=potential_energy_ev,
            zpe_ev=float(harmonic.get_ZPE_correction()),
            row=rows[grid.index(float(temperature))],
            table=rows,
            frequency_set=vib.frequency_set,
        )
