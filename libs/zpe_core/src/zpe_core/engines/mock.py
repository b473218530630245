"""The ``mock`` engine: an analytic pair potential, deterministic and fast.

It exists so the whole pipeline (task fan-out, Hessian, frequencies, ZPE) can
run without ``pw.x``. Each pair of atoms within a cutoff interacts through

* a Morse bond ``D[(1 - exp(-a (r - r0)))^2 - 1]`` while ``r`` is near ``r0``
  (switched off smoothly between 1.25 r0 and 1.6 r0), and
* a weak Morse term with its minimum at 2 r0 for non-bonded pairs (switched on
  where the bond switches off), which gives bends a restoring force,

all multiplied by a smooth cutoff. The Morse width is set from a target
diatomic wavenumber, ``k = 2 D a^2 = mu (2 pi c nu)^2``, so H2 at 0.74 Å has a
harmonic frequency of 4401 cm^-1 by construction. No periodic images.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_masses, atomic_numbers, covalent_radii

from zpe_client.models import TaskResult, TaskSpec
from zpe_core.engines.base import MOCK_VERSION, Engine
from zpe_core.errors import EngineError

# (r0 Å, D eV, target harmonic wavenumber cm^-1) per unordered pair of symbols.
_PAIRS: dict[frozenset[str], tuple[float, float, float]] = {
    frozenset({"H"}): (0.74, 4.75, 4401.0),
    frozenset({"O", "H"}): (0.97, 4.6, 3700.0),
    frozenset({"N", "H"}): (1.01, 4.5, 3400.0),
    frozenset({"C", "H"}): (1.09, 4.3, 3000.0),
    frozenset({"C", "O"}): (1.13, 11.1, 2143.0),
    frozenset({"N"}): (1.10, 9.8, 2330.0),
    frozenset({"O"}): (1.21, 5.2, 1580.0),
    frozenset({"C"}): (1.54, 3.6, 1000.0),
    frozenset({"C", "N"}): (1.16, 7.8, 2000.0),
    frozenset({"Cu", "C"}): (1.85, 1.5, 350.0),
    frozenset({"Cu", "O"}): (1.90, 1.2, 400.0),
    frozenset({"Cu", "H"}): (1.50, 2.5, 1800.0),
    frozenset({"Cu"}): (2.55, 0.6, 200.0),
}
_DEFAULT_D = 2.0  # eV
_DEFAULT_A = 1.8  # 1/Å

_CUTOFF = 3.0  # Å; extended for pairs whose bond switch reaches further
_CUTOFF_WIDTH = 0.5  # Å over which the cutoff function goes from 1 to 0
_BOND_ON, _BOND_OFF = 1.25, 1.6  # bond switch, in units of r0
# Weak non-bonded Morse (depth eV, width 1/Å, r0 in units of the bond r0): gives
# bends a restoring force with a minimum near typical 1-3 distances (H..H in H2O).
_NB_D, _NB_A, _NB_R0 = 0.5, 1.7, 2.0

_INVCM_TO_RAD_S = 2.0 * math.pi * units._c * 100.0  # nu (cm^-1) -> omega (rad/s)
_J_PER_M2_TO_EV_PER_A2 = 1.0 / units._e * 1e-20


def _mass(symbol: str) -> float:
    return float(atomic_masses[atomic_numbers[symbol]])


def pair_parameters(a: str, b: str) -> tuple[float, float, float]:
    """(r0 Å, D eV, Morse a 1/Å) for a pair of chemical symbols."""
    entry = _PAIRS.get(frozenset({a, b}))
    if entry is None:
        r0 = float(covalent_radii[atomic_numbers[a]] + covalent_radii[atomic_numbers[b]])
        return r0, _DEFAULT_D, _DEFAULT_A
    r0, depth, nu = entry
    mu_kg = _mass(a) * _mass(b) / (_mass(a) + _mass(b)) * units._amu
    k = mu_kg * (nu * _INVCM_TO_RAD_S) ** 2 * _J_PER_M2_TO_EV_PER_A2  # eV/Å^2
    return r0, depth, math.sqrt(k / (2.0 * depth))


def _switch(r: float, r_on: float, r_off: float) -> tuple[float, float]:
    """Cosine switch 1 -> 0 between r_on and r_off, and its derivative."""
    if r <= r_on:
        return 1.0, 0.0
    if r >= r_off:
        return 0.0, 0.0
    t = math.pi * (r - r_on) / (r_off - r_on)
    return 0.5 * (1.0 + math.cos(t)), -0.5 * math.sin(t) * math.pi / (r_off - r_on)


def _pair_energy(r: float, r0: float, depth: float, a: float) -> tuple[float, float]:
    """Energy (eV) and dE/dr (eV/Å) of one pair at distance r."""
    cutoff = max(_CUTOFF, _BOND_OFF * r0)
    fc, dfc = _switch(r, cutoff - _CUTOFF_WIDTH, cutoff)
    if fc == 0.0:
        return 0.0, 0.0
    ex = math.exp(-a * (r - r0))
    morse = depth * ((1.0 - ex) ** 2 - 1.0)
    dmorse = 2.0 * depth * a * ex * (1.0 - ex)
    ex_nb = math.exp(-_NB_A * (r - _NB_R0 * r0))
    rep = _NB_D * ((1.0 - ex_nb) ** 2 - 1.0)
    drep = 2.0 * _NB_D * _NB_A * ex_nb * (1.0 - ex_nb)
    s, ds = _switch(r, _BOND_ON * r0, _BOND_OFF * r0)
    inner = s * morse + (1.0 - s) * rep
    dinner = ds * morse + s * dmorse - ds * rep + (1.0 - s) * drep
    return fc * inner, dfc * inner + fc * dinner


def mock_energy_forces(
    symbols: list[str], positions: npt.ArrayLike, *, deadline: float | None = None
) -> tuple[float, npt.NDArray[np.float64]]:
    """Energy (eV) and forces (eV/Å) of the mock potential.

    O(n^2) pure Python: past ``deadline`` (``time.monotonic()``) it raises ``TimeoutError``.
    """
    pos = np.asarray(positions, dtype=float)
    n = len(symbols)
    if pos.shape != (n, 3):
        raise ValueError(f"positions have shape {pos.shape}, want ({n}, 3)")
    energy = 0.0
    forces = np.zeros((n, 3))
    for i in range(n):
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"stopped after {i} of {n} atoms")
        for j in range(i + 1, n):
            vec = pos[j] - pos[i]
            r = float(np.linalg.norm(vec))
            if r < 1e-8:
                raise ValueError(f"atoms {i} and {j} coincide")
            e, de = _pair_energy(r, *pair_parameters(symbols[i], symbols[j]))
            energy += e
            unit = vec / r
            forces[i] += de * unit
            forces[j] -= de * unit
    return energy, forces


class MockPotential(Calculator):
    """The mock potential as an ASE calculator (so ASE's own ``Vibrations`` can run on it)."""

    implemented_properties = ["energy", "forces"]  # noqa: RUF012 (ASE declares it a list)

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)  # type: ignore[no-untyped-call]
        assert self.atoms is not None
        energy, forces = mock_energy_forces(
            self.atoms.get_chemical_symbols(), self.atoms.get_positions()
        )
        self.results: dict[str, Any] = {
            "energy": energy,
            "free_energy": energy,
            "forces": forces,
        }


class MockEngine(Engine):
    """Engine ``mock``: energy and forces from :class:`MockPotential`; ignores ``spec.qe``.

    ``delay_seconds`` makes each task take at least that long (``ZPE_MOCK_DELAY_SECONDS``),
    so demos, load tests and chaos runs see tasks in flight; results do not change.
    ``timeout_seconds`` (``ZPE_TASK_TIMEOUT_SECONDS``, as for pw.x) bounds a task,
    delay included: past it the task fails with a retryable ``engine_timeout``.
    """

    name = "mock"

    def __init__(self, delay_seconds: float = 0.0, timeout_seconds: float | None = None) -> None:
        self.delay_seconds = delay_seconds
        self.timeout_seconds = timeout_seconds

    def version(self) -> str:
        return MOCK_VERSION

    def compute(self, spec: TaskSpec, workdir: Path) -> TaskResult:
        start = time.perf_counter()
        deadline = None if self.timeout_seconds is None else time.monotonic() + self.timeout_seconds
        try:
            energy, forces = mock_energy_forces(spec.symbols, spec.positions, deadline=deadline)
        except TimeoutError as exc:
            raise self._timeout(exc) from exc
        except (ValueError, KeyError) as exc:
            raise EngineError(
                f"mock engine cannot evaluate this geometry: {exc}",
                retryable=False,
                code="invalid_geometry",
            ) from exc
        if self.delay_seconds > 0:
            if deadline is not None and time.monotonic() + self.delay_seconds > deadline:
                time.sleep(max(0.0, deadline - time.monotonic()))
                raise self._timeout(TimeoutError("during the configured delay"))
            time.sleep(self.delay_seconds)
        return TaskResult(
            energy_ev=energy,
            forces_ev_per_a=forces.tolist(),
            engine=self.name,
            engine_version=MOCK_VERSION,
            wall_seconds=time.perf_counter() - start,
        )

    def _timeout(self, exc: TimeoutError) -> EngineError:
        return EngineError(
            f"the mock engine did not finish within {self.timeout_seconds:g} s ({exc})",
            retryable=True,
            code="engine_timeout",
        )
