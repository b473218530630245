"""Displacements and forces -> Hessian -> harmonic frequencies -> ZPE and entropy.

The displacement naming and order, the finite-difference Hessian and the
diagonalisation are ASE's (``ase.vibrations.Vibrations`` / ``VibrationsData``),
so a job computed here gives the same frequencies as ASE run on the same
forces. What is ours: which modes count. For a free molecule the 6 (5 if
linear) lowest-|frequency| modes are translations and rotations and are
excluded; every other mode counts, and imaginary ones are reported, never
silently dropped. For a free molecule the frequencies after projecting the
rigid translations and rotations out of the mass-weighted Hessian (Eckart) are
computed too, next to ASE's raw ones; the request chooses which set counts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from ase import Atoms, units
from ase.vibrations.data import VibrationsData
from ase.vibrations.vibrations import Displacement as _AseDisplacement

# CODATA 2018 (the brief's reference values). ASE's own units are CODATA 2014;
# its invcm differs from HC_EV_CM by ~1e-8 relative, so cm^-1 come from ASE
# (identical to ASE's Vibrations) and energies from these constants.
HC_EV_CM = 1.239841984e-4
"""h*c in eV*cm: the energy of a 1 cm^-1 quantum."""
KB_EV_K = 8.617333262e-5
"""Boltzmann constant in eV/K."""
R_JMOL_K = 8.314462618
"""Gas constant in J/(mol*K)."""

_AXES = "xyz"

FrequencySet = Literal["raw", "projected"]
"""Which frequencies count: ASE's raw ones, or those after the Eckart projection."""

IMAGINARY_WARNING_CM = 20.0
"""A mode that counts but for being imaginary beyond this |nu| (cm^-1) means "not a minimum"."""


@dataclass(frozen=True)
class Displacement:
    """One finite-difference point, named exactly as ASE's ``Vibrations`` names it.

    ``step`` is the signed multiple of ``delta``: +1/-1, and +2/-2 for ``nfree=4``
    (ASE names those ``"0x++"`` / ``"0x--"``); 0 for the reference ``"eq"``.
    """

    name: str
    atom: int | None
    axis: int | None
    step: int


def _ase_name(atom: int, axis: int, step: int) -> str:
    # ASE's Displacement namedtuple owns the naming rule; the ``vib`` field is unused for it.
    return str(_AseDisplacement(atom, axis, int(np.sign(step)), abs(step), None).name)


def displacement_name(atom: int, axis: int, step: int) -> str:
    """ASE's name of the point that moves ``atom`` by ``step * delta`` along ``axis``."""
    return _ase_name(atom, axis, step)


def displacements(indices: Sequence[int], nfree: int) -> list[Displacement]:
    """The reference point, then ASE's order: per atom, per axis, ``-`` then ``+`` steps."""
    if nfree not in (2, 4):
        raise ValueError(f"nfree must be 2 or 4, not {nfree}")
    _check_indices(indices)
    out = [Displacement(name="eq", atom=None, axis=None, step=0)]
    for atom in indices:
        for axis in range(3):
            for sign in (-1, 1):
                for ndisp in range(1, nfree // 2 + 1):
                    step = sign * ndisp
                    out.append(
                        Displacement(
                            name=_ase_name(int(atom), axis, step),
                            atom=int(atom),
                            axis=axis,
                            step=step,
                        )
                    )
    return out


def displaced_positions(
    positions: npt.ArrayLike, d: Displacement, delta: float
) -> npt.NDArray[np.float64]:
    """A copy of ``positions`` (natoms x 3, Å) moved by ``d.step * delta`` along ``d.axis``."""
    out = np.array(positions, dtype=float, copy=True)
    if d.atom is None or d.axis is None or d.step == 0:
        return out
    # Same float arithmetic as ASE's iterdisplace (pos += ndisp*sign*delta), so
    # positions - and hence task keys - agree bit for bit.
    out[d.atom, d.axis] += d.step * delta
    return out


@dataclass(frozen=True)
class Mode:
    """One harmonic mode. Imaginary modes carry a negative ``frequency_cm`` (= -|nu|)."""

    index: int
    frequency_cm: float
    imaginary: bool
    counted: bool
    energy_ev: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "frequency_cm": self.frequency_cm,
            "imaginary": self.imaginary,
            "counted": self.counted,
            "energy_ev": self.energy_ev,
        }


@dataclass(frozen=True, eq=False)
class VibrationResult:
    """Frequencies, ZPE and vibrational entropy of one set of mobile atoms."""

    modes: list[Mode]
    zpe_ev: float
    s_vib_jmol_k: float
    temperature: float
    free_molecule: bool
    linear: bool
    excluded: int
    hessian: npt.NDArray[np.float64]  # Cartesian, eV/Å^2, 3n x 3n, as VibrationsData holds it
    # The fields below have defaults so callers that build one with the fields above only
    # (tests, the symmetry rebuild) keep working.
    vectors: npt.NDArray[np.float64] | None = None
    """Each mode's displacement (ASE's ``get_modes``): modes x mobile atoms x 3, as ``modes``."""
    raw_frequencies_cm: list[float] = dataclasses.field(default_factory=list)
    """ASE's frequencies of the Hessian as computed (signed, ascending)."""
    projected_frequencies_cm: list[float] | None = None
    """Free molecules: the frequencies after the Eckart projection (signed, ascending)."""
    frequency_set: FrequencySet = "raw"
    """The set ``modes``, the ZPE and the entropy come from."""
    data: VibrationsData | None = None
    """ASE's ``VibrationsData`` of the raw Hessian (the ``vibrations`` file)."""
    used_data: VibrationsData | None = None
    """ASE's ``VibrationsData`` of the set used (raw, or the projected Hessian)."""

    @property
    def n_imaginary(self) -> int:
        """Imaginary modes among those not excluded as translations/rotations."""
        excluded = self.excluded_modes()
        return sum(1 for m in self.modes if m.imaginary and m.index not in excluded)

    def excluded_modes(self) -> set[int]:
        """Indices of the modes excluded as translations/rotations (lowest |frequency|)."""
        return _lowest_magnitude(self.modes, self.excluded)

    @property
    def frequencies_cm(self) -> list[float]:
        return [m.frequency_cm for m in self.modes]

    def imaginary_beyond(self, threshold_cm: float = IMAGINARY_WARNING_CM) -> list[Mode]:
        """Modes that would count but are imaginary with |nu| above ``threshold_cm``."""
        excluded = self.excluded_modes()
        return [
            m
            for m in self.modes
            if m.imaginary and m.index not in excluded and abs(m.frequency_cm) > threshold_cm
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (the Hessian as nested lists)."""
        excluded = self.excluded_modes()
        return {
            "zpe_ev": self.zpe_ev,
            "s_vib_jmol_k": self.s_vib_jmol_k,
            "temperature": self.temperature,
            "free_molecule": self.free_molecule,
            "linear": self.linear,
            "excluded": self.excluded,
            "n_imaginary": self.n_imaginary,
            "modes": [m.to_dict() | {"excluded": m.index in excluded} for m in self.modes],
            "hessian_ev_per_a2": self.hessian.tolist(),
        }


def _lowest_magnitude(modes: Sequence[Mode], count: int) -> set[int]:
    by_magnitude = sorted(modes, key=lambda m: (abs(m.frequency_cm), m.index))
    return {m.index for m in by_magnitude[:count]}


def zpe_of_frequencies(freqs_cm: Sequence[float]) -> float:
    """1/2 * sum(h c nu) in eV over the positive wavenumbers (cm^-1); others ignored."""
    return 0.5 * HC_EV_CM * sum(float(f) for f in freqs_cm if f > 0.0)


def entropy_of_frequencies(freqs_cm: Sequence[float], temperature: float) -> float:
    """Harmonic-oscillator entropy in J/(mol K) of the positive wavenumbers at ``temperature``."""
    if temperature <= 0.0:
        raise ValueError("temperature must be positive")
    total = 0.0
    for f in freqs_cm:
        if f <= 0.0:
            continue
        x = HC_EV_CM * float(f) / (KB_EV_K * temperature)
        # Written with exp(-x) so large x underflows to 0 instead of overflowing.
        emx = math.exp(-x)
        total += x * emx / -math.expm1(-x) - math.log1p(-emx)
    return R_JMOL_K * total


def is_linear(atoms: Atoms, tol: float = 1e-3) -> bool:
    """Whether the atoms lie on a line (smallest principal moment ~ 0 relative to the largest)."""
    if len(atoms) <= 2:
        return True
    # The molecule's own moments: in a periodic box ASE would warn that it ignores the cell.
    alone = Atoms(atoms.numbers, positions=atoms.positions, masses=atoms.get_masses())
    inertia = alone.get_moments_of_inertia()
    moments = np.sort(np.asarray(inertia, dtype=np.float64))
    return bool(moments[0] <= tol * max(moments[2], 1e-12))


def _check_indices(indices: Sequence[int]) -> None:
    if len(indices) == 0:
        raise ValueError("at least one mobile atom is needed")
    if len(set(indices)) != len(indices):
        raise ValueError("mobile indices contain duplicates")


def hessian_from_forces(
    indices: Sequence[int],
    delta: float,
    nfree: int,
    forces: Mapping[str, npt.ArrayLike],
    natoms: int,
) -> npt.NDArray[np.float64]:
    """The Cartesian Hessian (eV/Å^2) by central differences, as ``Vibrations.read()`` builds it."""
    _check_indices(indices)
    if nfree not in (2, 4):
        raise ValueError(f"nfree must be 2 or 4, not {nfree}")
    idx = np.asarray(indices, dtype=int)

    def f(atom: int, axis: int, step: int) -> npt.NDArray[np.float64]:
        name = _ase_name(atom, axis, step)
        if name not in forces:
            raise ValueError(f"forces for displacement {name!r} are missing")
        arr = np.asarray(forces[name], dtype=float)
        if arr.shape != (natoms, 3):
            raise ValueError(f"forces for {name!r} have shape {arr.shape}, want ({natoms}, 3)")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"forces for {name!r} are not finite")
        return arr

    n = 3 * len(idx)
    hessian = np.empty((n, n))
    r = 0
    for atom in idx:
        for axis in range(3):
            fminus = f(int(atom), axis, -1)
            fplus = f(int(atom), axis, 1)
            if nfree == 2:
                row = 0.5 * (fminus - fplus)[idx].ravel()
            else:
                fmm = f(int(atom), axis, -2)
                fpp = f(int(atom), axis, 2)
                # ASE's nfree=4 stencil, kept verbatim so results match ASE.
                row = (-fmm + 8 * fminus - 8 * fplus + fpp)[idx].ravel() / 12.0
            hessian[r] = row / (2 * delta)
            r += 1
    hessian += hessian.copy().T
    return hessian


def _n_rigid(natoms: int, linear: bool) -> int:
    if natoms == 1:
        return 3
    return 5 if linear else 6


def rigid_body_basis(atoms: Atoms, indices: Sequence[int]) -> npt.NDArray[np.float64]:
    """Orthonormal mass-weighted translations and rotations of ``atoms[indices]``: 3n x k.

    k is 6, 5 for a linear set and 3 for one atom: the rotations about the set's
    own centre of mass, orthonormalised by SVD (a linear set's null rotation drops out).
    """
    idx = np.asarray(indices, dtype=int)
    masses = atoms.get_masses()[idx]
    positions = atoms.positions[idx]
    centre = masses @ positions / masses.sum()
    r = positions - centre
    sqrt_m = np.sqrt(masses)
    vectors = []
    for axis in range(3):
        t = np.zeros((len(idx), 3))
        t[:, axis] = sqrt_m
        vectors.append(t.ravel())
        e = np.zeros(3)
        e[axis] = 1.0
        vectors.append((np.cross(e, r) * sqrt_m[:, None]).ravel())
    u, sing, _ = np.linalg.svd(np.array(vectors).T, full_matrices=False)
    return np.asarray(u[:, sing > 1e-6 * sing.max()], dtype=np.float64)


def project_rigid_body(
    hessian: npt.ArrayLike, atoms: Atoms, indices: Sequence[int]
) -> npt.NDArray[np.float64]:
    """The Cartesian Hessian with rigid translations and rotations projected out (Eckart).

    Projects the mass-weighted Hessian with P = 1 - D D^T (D: :func:`rigid_body_basis`)
    and returns it in Cartesian form, so ASE's ``VibrationsData`` diagonalises it
    like any other: the rigid-body modes come out at zero, the others are the
    vibrations orthogonal to them.
    """
    h = np.asarray(hessian, dtype=float)
    idx = np.asarray(indices, dtype=int)
    sqrt_m = np.repeat(np.sqrt(atoms.get_masses()[idx]), 3)
    mass_weighted = h / np.outer(sqrt_m, sqrt_m)
    basis = rigid_body_basis(atoms, indices)
    projector = np.eye(len(sqrt_m)) - basis @ basis.T
    projected = projector @ mass_weighted @ projector
    projected = 0.5 * (projected + projected.T)
    return np.asarray(projected * np.outer(sqrt_m, sqrt_m), dtype=np.float64)


def rigid_body_overlaps(
    vectors: npt.ArrayLike, atoms: Atoms, indices: Sequence[int]
) -> list[float]:
    """Per mode (``vectors``: modes x mobile atoms x 3, as ASE's ``get_modes``), the share
    (0..1) of its mass-weighted vector that is a rigid translation or rotation of the mobile
    atoms alone: 1 for a rigid-body mode, a partly frozen molecule's tell-tale in between."""
    idx = np.asarray(indices, dtype=int)
    sqrt_m = np.sqrt(atoms.get_masses()[idx])
    basis = rigid_body_basis(atoms, indices)
    out = []
    for vector in np.asarray(vectors, dtype=float):
        v = (vector * sqrt_m[:, None]).ravel()
        norm = float(v @ v)
        out.append(0.0 if norm == 0.0 else float(np.sum((basis.T @ v) ** 2) / norm))
    return out


def _zero_rigid_modes(
    signed: list[tuple[float, bool]],
    vectors: npt.NDArray[np.float64],
    atoms: Atoms,
    indices: Sequence[int],
) -> tuple[list[tuple[float, bool]], npt.NDArray[np.float64]]:
    """The projected Hessian's rigid-body modes at exactly 0 cm^-1.

    The projection makes their eigenvalues zero; what the eigensolver returns is
    rounding (sqrt(eps * lambda_max), ~1e-4 cm^-1), so the k modes lying in the
    rigid-body subspace are set to 0 rather than shown as noise.
    """
    k = rigid_body_basis(atoms, indices).shape[1]
    overlaps = rigid_body_overlaps(vectors, atoms, indices)
    rigid = set(sorted(range(len(signed)), key=lambda i: -overlaps[i])[:k])
    zeroed = [(0.0, False) if i in rigid else mode for i, mode in enumerate(signed)]
    order = sorted(range(len(zeroed)), key=lambda i: zeroed[i][0])
    return [zeroed[i] for i in order], vectors[order]


#: The warning code (parse preview and result) for :func:`partly_frozen_molecule`.
PARTIAL_FREE_MOLECULE = "partial_free_molecule"


def partly_frozen_molecule(natoms: int, fixed: Sequence[int], mobile: Sequence[int]) -> bool:
    """No atom is fixed in the input, yet some are left out of the mobile set."""
    return not fixed and 0 < len(set(mobile)) < natoms


def partly_frozen_note(natoms: int, mobile: Sequence[int]) -> str:
    """Words for :func:`partly_frozen_molecule`: what leaving atoms out does to the ZPE."""
    frozen = sorted(set(range(natoms)) - {int(i) for i in mobile})
    return (
        f"no atom is fixed in the input, but atoms {frozen} are not mobile: if this is a free "
        "molecule, freezing them pins the mobile atoms, so motions that would be translations "
        "and rotations of the molecule become stiff modes of the partial Hessian and are counted "
        "in the ZPE (which comes out too high); make every atom mobile to exclude them"
    )


def _signed_modes(
    data: VibrationsData,
) -> tuple[list[tuple[float, bool]], npt.NDArray[np.float64]]:
    """ASE's energies as signed wavenumbers (imaginary negative), ascending, with the modes."""
    energies, vectors = data.get_energies_and_modes()
    signed: list[tuple[float, bool]] = []
    for e in np.asarray(energies, dtype=complex):
        imaginary = abs(e.imag) > abs(e.real)
        magnitude_cm = (abs(e.imag) if imaginary else e.real) / units.invcm
        signed.append((-magnitude_cm if imaginary else float(magnitude_cm), imaginary))
    order = sorted(range(len(signed)), key=lambda i: signed[i][0])
    return [signed[i] for i in order], np.asarray(vectors, dtype=float)[order]


def analyze(
    atoms: Atoms,
    indices: Sequence[int],
    delta: float,
    nfree: int,
    forces: Mapping[str, npt.ArrayLike],
    temperature: float,
    free_molecule: bool,
    *,
    frequency_set: FrequencySet = "raw",
) -> VibrationResult:
    """Frequencies, ZPE and entropy from the forces of every displacement.

    ``atoms`` is the undisplaced structure (its masses are used); ``forces``
    maps each displacement name (see :func:`displacements`) to natoms x 3
    forces in eV/Å. ``free_molecule`` means no fixed atoms and every atom
    mobile: then the rigid-body modes are excluded, else every real mode counts.
    ``frequency_set="projected"`` counts a free molecule's Eckart-projected
    frequencies instead of the raw ones (elsewhere there is nothing to project:
    the raw set is used).
    """
    if delta <= 0.0:
        raise ValueError("delta must be positive")
    if temperature <= 0.0:
        raise ValueError("temperature must be positive")
    if free_molecule and sorted(int(i) for i in indices) != list(range(len(atoms))):
        raise ValueError("a free molecule must have every atom mobile")
    hessian = hessian_from_forces(indices, delta, nfree, forces, len(atoms))
    data = VibrationsData.from_2d(atoms, hessian, indices=list(indices))
    raw_signed, raw_vectors = _signed_modes(data)
    projected_data: VibrationsData | None = None
    projected_freqs: list[float] | None = None
    signed, vectors, used = raw_signed, raw_vectors, data
    if free_molecule:
        projected_data = VibrationsData.from_2d(
            atoms, project_rigid_body(data.get_hessian_2d(), atoms, indices), indices=list(indices)
        )
        projected_signed, projected_vectors = _zero_rigid_modes(
            *_signed_modes(projected_data), atoms, indices
        )
        projected_freqs = [f for f, _ in projected_signed]
        if frequency_set == "projected":
            signed, vectors, used = projected_signed, projected_vectors, projected_data
    chosen: FrequencySet = "projected" if used is projected_data else "raw"

    linear = is_linear(atoms)
    excluded = min(_n_rigid(len(atoms), linear), len(signed)) if free_molecule else 0
    raw = [
        Mode(
            index=i,
            frequency_cm=freq,
            imaginary=imaginary,
            counted=False,
            energy_ev=0.0 if imaginary else HC_EV_CM * freq,
        )
        for i, (freq, imaginary) in enumerate(signed)
    ]
    excluded_set = _lowest_magnitude(raw, excluded)
    modes = [
        dataclasses.replace(
            m, counted=not m.imaginary and m.frequency_cm > 0.0 and m.index not in excluded_set
        )
        for m in raw
    ]
    counted_freqs = [m.frequency_cm for m in modes if m.counted]
    return VibrationResult(
        modes=modes,
        zpe_ev=zpe_of_frequencies(counted_freqs),
        s_vib_jmol_k=entropy_of_frequencies(counted_freqs, temperature),
        temperature=temperature,
        free_molecule=free_molecule,
        linear=linear,
        excluded=excluded,
        hessian=np.asarray(data.get_hessian_2d(), dtype=float),
        vectors=vectors,
        raw_frequencies_cm=[f for f, _ in raw_signed],
        projected_frequencies_cm=projected_freqs,
        frequency_set=chosen,
        data=data,
        used_data=used,
    )
