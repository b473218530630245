"""Symmetry-reduced displacement plans: compute the independent points, rebuild the rest.

spglib finds the space-group operations of the structure (one call, tolerance
:data:`SYMPREC`, never loosened), with mobile atoms labelled apart from fixed
ones so no operation maps a mobile atom onto a fixed twin. Of those, only the
operations whose Cartesian rotation is a signed permutation of x, y, z are kept
(and that leave the k-point grid invariant): such an operation maps a displacement
of one atom by ``step * delta`` along one axis exactly onto a displacement of its
image atom by ``±step * delta`` along another axis, so the forces of the image
point are the rotated, permuted forces of the computed one, with no O(delta^2)
error. Every displaced point is then either computed or the image of a computed
one, and the full central-difference Hessian is built from them as before.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import spglib
from ase import Atoms

from zpe_core.jobs.models import DerivedPoint, JobSymmetry, SymmetryOperation, TaskRef
from zpe_core.physics.analysis import Displacement, displacement_name
from zpe_core.physics.plan import Plan

SYMPREC = 1e-5
"""spglib's distance tolerance in Å: input coordinates carry 6 decimals, so an exact
symmetry holds to ~1e-6 Å; a geometry off by more is treated as not symmetric."""

FORCE_TOLERANCE = 1e-4
"""eV/Å: how far the reference SCF's forces on the mobile atoms may differ from their
symmetrized image (the group average). A converged SCF (``conv_thr`` <= 1e-8) is well
inside it; beyond it the points are not taken as images of each other."""

SymmetryMode = Literal["auto", "off"]


def apply_to_forces(op: SymmetryOperation, forces: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The forces of the image structure: ``out[p(i)] = R @ forces[i]``."""
    f = np.asarray(forces, dtype=float)
    out = np.empty_like(f)
    out[op.permutation] = f @ np.asarray(op.rotation, dtype=float).T
    return out


def apply_to_displacement(op: SymmetryOperation, d: Displacement) -> Displacement:
    """The displacement ``op`` maps ``d`` onto (``eq`` stays ``eq``)."""
    if d.atom is None or d.axis is None:
        return d
    column = [row[d.axis] for row in op.rotation]
    axis = next(i for i, v in enumerate(column) if v != 0)
    atom = op.permutation[d.atom]
    step = column[axis] * d.step
    return Displacement(name=displacement_name(atom, axis, step), atom=atom, axis=axis, step=step)


@dataclass(frozen=True)
class Reduction:
    """Which points a job computes and how the others follow from them.

    ``images`` maps each derived point's name to (the computed point it is the
    image of, the index of the operation in ``operations``). Empty when nothing is
    reduced; then ``reason`` says why.
    """

    spacegroup: str | None
    operations: list[SymmetryOperation]
    computed: list[str]
    images: dict[str, tuple[str, int]] = field(default_factory=dict)
    reason: str | None = None


def structure_operations(
    atoms: Atoms,
    mobile: Sequence[int],
    *,
    kpts: Sequence[int] | None = None,
    koffset: Sequence[int] = (0, 0, 0),
    symprec: float = SYMPREC,
) -> tuple[str | None, list[SymmetryOperation]]:
    """The space group (spglib's symbol and number) and the usable operations.

    Usable: a Cartesian signed permutation that maps the whole structure onto
    itself (modulo the lattice), mobile atoms onto mobile atoms, and the k-point
    grid onto itself. The identity comes first.
    """
    mobile_set = {int(i) for i in mobile}
    numbers = [2 * int(z) + (1 if i in mobile_set else 0) for i, z in enumerate(atoms.numbers)]
    lattice = np.asarray(atoms.cell.array, dtype=float)
    scaled = atoms.get_scaled_positions(wrap=False)
    with warnings.catch_warnings():
        # spglib 2.x warns about its error-handling default on every call; None = no group.
        warnings.simplefilter("ignore", DeprecationWarning)
        dataset = spglib.get_symmetry_dataset(
            (lattice.tolist(), scaled.tolist(), numbers), symprec=symprec
        )
    if dataset is None:
        return None, [_identity(len(atoms))]
    spacegroup = f"{dataset.international} ({dataset.number})"
    ops: list[SymmetryOperation] = []
    for rot_frac, trans in zip(dataset.rotations, dataset.translations, strict=True):
        cart = lattice.T @ rot_frac @ np.linalg.inv(lattice.T)
        rounded = np.rint(cart)
        if not np.allclose(cart, rounded, atol=1e-8) or not _signed_permutation(rounded):
            continue
        if not _kgrid_invariant(rot_frac, kpts, koffset):
            continue
        perm = _atom_permutation(scaled, numbers, rot_frac, trans, atoms.pbc, symprec, lattice)
        if perm is None:
            continue
        op = SymmetryOperation(rotation=rounded.astype(int).tolist(), permutation=perm)
        if op not in ops:
            ops.append(op)
    identity = _identity(len(atoms))
    ops = [identity] + [op for op in ops if op != identity]
    return spacegroup, ops


def reduce(
    displacements: Sequence[Displacement],
    operations: Sequence[SymmetryOperation],
    spacegroup: str | None,
) -> Reduction:
    """Split ``displacements`` (ASE order) into computed points and images of them.

    The first point of each orbit (in ASE order) is computed; the operations form a
    group, so one pass of every operation over it reaches its whole orbit.
    """
    names = {d.name for d in displacements}
    computed: list[str] = []
    images: dict[str, tuple[str, int]] = {}
    for d in displacements:
        if d.name in images:
            continue
        computed.append(d.name)
        done = set(computed)
        for index, op in enumerate(operations):
            image = apply_to_displacement(op, d)
            if image.name not in names:
                # Cannot happen for operations that map mobile atoms onto mobile atoms.
                raise ValueError(f"operation {index} maps {d.name} outside the plan")
            if image.name != d.name and image.name not in images and image.name not in done:
                images[image.name] = (d.name, index)
    reason = None if images else "the structure has no symmetry that relates displaced points"
    return Reduction(
        spacegroup=spacegroup,
        operations=list(operations),
        computed=computed,
        images=images,
        reason=reason,
    )


def plan_reduction(
    atoms: Atoms,
    mobile: Sequence[int],
    displacements: Sequence[Displacement],
    *,
    mode: SymmetryMode,
    kpts: Sequence[int] | None,
    koffset: Sequence[int],
) -> Reduction:
    """The reduction of a job's displacements (everything computed with ``mode="off"``)."""
    everything = [d.name for d in displacements]
    if mode == "off":
        return Reduction(None, [], everything, reason="symmetry off in the request")
    spacegroup, ops = structure_operations(atoms, mobile, kpts=kpts, koffset=koffset)
    return reduce(displacements, ops, spacegroup)


def select_points(plan: Plan, mode: SymmetryMode) -> tuple[list[TaskRef], JobSymmetry]:
    """The tasks a job computes (ASE order, the reference first) and its symmetry record."""
    reference = plan.tasks[0].spec
    atoms = Atoms(
        symbols=plan.structure.symbols,
        positions=reference.positions,
        cell=reference.cell,
        pbc=reference.pbc,
    )
    reduction = plan_reduction(
        atoms,
        plan.structure.mobile_indices,
        [t.displacement for t in plan.tasks],
        mode=mode,
        kpts=plan.structure.kpts,
        koffset=plan.structure.koffset,
    )
    by_name = {t.displacement.name: t for t in plan.tasks}
    derived = []
    for name, (source, index) in reduction.images.items():
        d = by_name[name].displacement
        assert d.atom is not None and d.axis is not None
        derived.append(
            DerivedPoint(
                name=name,
                task_id=by_name[name].task_id,
                atom=d.atom,
                axis=d.axis,
                step=d.step,
                source=source,
                operation=index,
            )
        )
    refs = [ref for ref in plan.refs if ref.name not in reduction.images]
    record = JobSymmetry(
        mode=mode,
        spacegroup=reduction.spacegroup,
        operations=reduction.operations if derived else [],
        derived=derived,
        points_full=len({t.task_id for t in plan.tasks}),
        reason=reduction.reason,
    )
    return refs, record


def broken_by_reference(
    record: JobSymmetry, reference_forces: npt.ArrayLike, mobile: Sequence[int]
) -> str | None:
    """Why the reference's forces rule the reduction out, or ``None`` if they respect it."""
    deviation = reference_asymmetry(reference_forces, record.operations, mobile)
    if deviation <= FORCE_TOLERANCE:
        return None
    return (
        f"the reference SCF's forces break the structure's symmetry ({deviation:.2e} eV/Å "
        f"from their symmetrized image on the mobile atoms, more than {FORCE_TOLERANCE:g}): "
        "every point was computed"
    )


def rebuild_job_forces(
    forces: Mapping[str, npt.ArrayLike], record: JobSymmetry
) -> dict[str, npt.NDArray[np.float64]]:
    """Forces of every point of a reduced job from those of its computed points."""
    images = {d.name: (d.source, d.operation) for d in record.derived}
    return rebuild_forces(forces, images, record.operations)


def rebuild_forces(
    forces: Mapping[str, npt.ArrayLike],
    images: Mapping[str, tuple[str, int]],
    operations: Sequence[SymmetryOperation],
) -> dict[str, npt.NDArray[np.float64]]:
    """Forces of every point: the computed ones as given, each image from its source."""
    out = {name: np.asarray(f, dtype=float) for name, f in forces.items()}
    for name, (source, index) in images.items():
        if source not in out:
            raise ValueError(f"forces for {source!r} (the source of {name!r}) are missing")
        out[name] = apply_to_forces(operations[index], out[source])
    return out


def reference_asymmetry(
    forces: npt.ArrayLike, operations: Sequence[SymmetryOperation], atoms: Sequence[int]
) -> float:
    """Largest |F - F_sym| (eV/Å) over ``atoms``, F_sym the group average of F's images.

    Zero for forces that respect the operations; a broken-symmetry SCF or a
    geometry that is only nearly symmetric shows here first.
    """
    f = np.asarray(forces, dtype=float)
    if not operations:
        return 0.0
    symmetrized = sum(apply_to_forces(op, f) for op in operations) / len(operations)
    idx = list(atoms)
    return float(np.max(np.abs(f[idx] - np.asarray(symmetrized)[idx]))) if idx else 0.0


def _identity(natoms: int) -> SymmetryOperation:
    return SymmetryOperation(
        rotation=[[1, 0, 0], [0, 1, 0], [0, 0, 1]], permutation=list(range(natoms))
    )


def _signed_permutation(m: npt.NDArray[np.float64]) -> bool:
    return bool(
        np.all(np.isin(m, (-1.0, 0.0, 1.0)))
        and np.all(np.abs(m).sum(axis=0) == 1)
        and np.all(np.abs(m).sum(axis=1) == 1)
    )


def _atom_permutation(
    scaled: npt.NDArray[np.float64],
    numbers: Sequence[int],
    rot: npt.NDArray[np.int_],
    trans: npt.NDArray[np.float64],
    pbc: npt.NDArray[np.bool_],
    symprec: float,
    lattice: npt.NDArray[np.float64],
) -> list[int] | None:
    """Atom ``i`` -> the atom of the same type at its image (modulo the lattice along
    periodic directions), or ``None`` if some image has no atom within ``symprec`` Å."""
    image = scaled @ np.asarray(rot, dtype=float).T + trans
    periodic = np.asarray(pbc, dtype=bool)
    perm: list[int] = []
    for i, target in enumerate(image):
        diff = scaled - target
        diff[:, periodic] -= np.rint(diff[:, periodic])
        dist = np.linalg.norm(diff @ lattice, axis=1)
        candidates = [
            int(j) for j in np.flatnonzero(dist < symprec) if numbers[int(j)] == numbers[i]
        ]
        if len(candidates) != 1:
            return None
        perm.append(int(candidates[0]))
    if len(set(perm)) != len(perm):
        return None
    return perm


def _kgrid_invariant(
    rot: npt.NDArray[np.int_], kpts: Sequence[int] | None, koffset: Sequence[int]
) -> bool:
    """Whether the Monkhorst-Pack grid maps onto itself (or onto its time-reversed
    copy, which gives the same forces without magnetism) under ``rot``."""
    if kpts is None:
        return True
    n = np.asarray(kpts, dtype=float)
    shift = np.asarray(koffset, dtype=float)
    grid = np.stack(
        np.meshgrid(*[np.arange(int(k)) for k in kpts], indexing="ij"), axis=-1
    ).reshape(-1, 3)
    points = (grid + shift / 2.0) / n
    # Reciprocal fractional coordinates transform with the inverse transpose.
    mapped = points @ np.linalg.inv(np.asarray(rot, dtype=float))  # (R^-T k) as rows

    def key(p: npt.NDArray[np.float64]) -> set[tuple[int, ...]]:
        return {tuple(row) for row in np.rint((p % 1.0) * 2 * n).astype(int) % (2 * n).astype(int)}

    original = key(points)
    return key(mapped) == original or key(-mapped) == original
