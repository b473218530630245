"""What a client needs before it submits: the parsed structure and the service's options.

``preview_request`` reads a submission the way ``JobService.plan`` does (same
parser, same mobile-atom rules, same engine check) but builds no tasks and
stores nothing, so a UI can show the structure as soon as the text is pasted.
``client_config`` describes the engines, limits and defaults a client may use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol, get_args

from ase.neighborlist import neighbor_list
from pydantic import BaseModel, Field

from zpe_client.models import JobRequest
from zpe_core.errors import InputError
from zpe_core.jobs.models import hill_formula
from zpe_core.physics.analysis import (
    PARTIAL_FREE_MOLECULE,
    displacements,
    partly_frozen_molecule,
    partly_frozen_note,
)
from zpe_core.physics.namelists import PW_DEFAULT_CONV_THR_RY, InputLimits
from zpe_core.physics.qe_input import (
    ParsedInput,
    check_species_labels,
    parse_qe_input,
    select_mobile,
)
from zpe_core.physics.symmetry import plan_reduction

#: Atoms closer than this (Angstrom) are almost certainly a mistake (a duplicated line).
OVERLAP_ANGSTROM = 0.5
#: Finite-difference forces need a tight SCF; pw.x's default conv_thr is 1e-6 Ry.
LOOSE_CONV_THR_RY = 1e-8
#: Below this the force differences drown in SCF noise; above it anharmonicity shows.
SMALL_DELTA_ANGSTROM = 0.005
LARGE_DELTA_ANGSTROM = 0.03


class EngineOptions(Protocol):
    """The engines a service offers (``zpe_core.settings.ServiceSettings`` has them)."""

    @property
    def default_engine(self) -> str: ...
    @property
    def engines(self) -> list[str]: ...


class PreviewSettings(EngineOptions, Protocol):
    """The service options a preview reads (``zpe_core.settings.ApiSettings`` has them):
    a port, so the physics never imports the settings that configure the processes."""

    @property
    def execution_mode(self) -> str: ...
    @property
    def pseudo_dir(self) -> str: ...
    @property
    def max_input_bytes(self) -> int: ...
    @property
    def max_mobile_atoms(self) -> int: ...
    @property
    def input_limits(self) -> InputLimits: ...
    @property
    def poll_retry_after_seconds(self) -> int: ...


class InputWarning(BaseModel):
    """Something that runs but is probably not what the user wants."""

    code: str = Field(description="Stable: atoms_overlap, loose_conv_thr, ...")
    message: str


class AtomView(BaseModel):
    """One atom of the input, positions in Angstrom."""

    index: int = Field(description="0-based, the index used in `mobile`.")
    label: str = Field(description="The ATOMIC_SPECIES label.")
    element: str
    position: list[float] = Field(description="Cartesian position in Angstrom.")
    fixed: bool = Field(description="All three if_pos flags are 0: the atom cannot move.")
    partially_fixed: bool = Field(description="Some if_pos flags are 0 (still displaced).")
    mobile_default: bool = Field(description="Displaced when no `mobile` list is given.")
    mobile: bool = Field(description="Displaced with the `mobile` list of this request.")


class SpeciesView(BaseModel):
    label: str
    element: str
    mass: float = Field(description="The mass given in ATOMIC_SPECIES.")
    pseudopotential: str


class KPointsView(BaseModel):
    mode: Literal["gamma", "automatic"]
    grid: list[int] | None = Field(description="nk1 nk2 nk3; null for the Gamma point.")
    shift: list[int]


class InputPreview(BaseModel):
    """The structure read from a ``pw.x`` input, and what a job on it would compute."""

    natoms: int
    formula: str
    atoms: list[AtomView]
    cell: list[list[float]] = Field(description="Lattice vectors (rows) in Angstrom.")
    species: list[SpeciesView]
    kpoints: KPointsView
    ecutwfc: float | None
    ecutrho: float | None
    engine: str
    mobile_default: list[int]
    mobile: list[int]
    free_molecule: bool = Field(
        description="No atom fixed and every atom mobile: translations and rotations excluded."
    )
    tasks: int = Field(description="SCF points the job needs (reference + displacements).")
    tasks_symmetric: int = Field(
        description="SCF points with the request's `symmetry` (equal to `tasks` with 'off' "
        "or no usable symmetry); more are computed if the reference breaks the symmetry."
    )
    spacegroup: str | None = Field(description="The structure's space group (spglib).")
    symmetry_operations: int = Field(
        description="Operations used to rebuild points (signed permutations of x, y, z)."
    )
    partly_frozen: str | None = Field(
        default=None,
        description="Set when no atom is fixed but some are not mobile: what freezing part of a "
        "free molecule does to the ZPE, in words (also among the warnings).",
    )
    warnings: list[InputWarning]


def resolve_engine(requested: str | None, settings: EngineOptions) -> str:
    """The engine a request runs on; :class:`InputError` if the server does not offer it."""
    engine = requested or settings.default_engine
    if engine not in settings.engines:
        raise InputError(
            f"engine {engine!r} is not offered here; choose one of {settings.engines}",
            code="unknown_engine",
        )
    return engine


def preview_request(request: JobRequest, settings: PreviewSettings) -> InputPreview:
    """Parse and check a submission; raise :class:`InputError` with a code on any problem.

    Without ``mobile`` the default selection (every atom not fully fixed) is
    shown even when it exceeds ``max_mobile_atoms``, with a warning, so the
    user can narrow it down; an explicit ``mobile`` list is checked exactly as
    a submission is.
    """
    engine = resolve_engine(request.engine, settings)
    parsed = parse_qe_input(
        request.input_text, max_bytes=settings.max_input_bytes, limits=settings.input_limits
    )
    check_species_labels(parsed)
    natoms = len(parsed.atoms)
    fixed = set(parsed.fixed_indices)
    partial = set(parsed.partially_fixed_indices)
    default = [i for i in range(natoms) if i not in fixed]
    warnings: list[InputWarning] = []
    if request.mobile is None:
        mobile = default
        if not mobile:
            warnings.append(
                InputWarning(
                    code="nothing_mobile",
                    message="every atom is fixed (if_pos 0 0 0): there is nothing to displace",
                )
            )
        elif len(mobile) > settings.max_mobile_atoms:
            warnings.append(
                InputWarning(
                    code="too_many_mobile",
                    message=f"{len(mobile)} atoms are not fixed but at most "
                    f"{settings.max_mobile_atoms} can be mobile: choose the atoms to displace",
                )
            )
    else:
        mobile = select_mobile(parsed, request.mobile, max_mobile=settings.max_mobile_atoms)
    if partial:
        warnings.append(
            InputWarning(
                code="partially_fixed",
                message=f"atoms {sorted(partial)} are only partly fixed (some if_pos 0); "
                "if mobile they are displaced along x, y and z",
            )
        )
    warnings += input_warnings(parsed, request, engine, settings)
    partly_frozen = (
        partly_frozen_note(natoms, mobile)
        if partly_frozen_molecule(natoms, sorted(fixed), mobile)
        else None
    )
    if partly_frozen:
        warnings.append(InputWarning(code=PARTIAL_FREE_MOLECULE, message=partly_frozen))
    chosen = set(mobile)
    symbols = parsed.atoms.get_chemical_symbols()
    atoms = [
        AtomView(
            index=i,
            label=parsed.labels[i],
            element=symbols[i],
            position=[round(float(x), 8) for x in parsed.atoms.positions[i]],
            fixed=i in fixed,
            partially_fixed=i in partial,
            mobile_default=i not in fixed,
            mobile=i in chosen,
        )
        for i in range(natoms)
    ]
    system = parsed.input_data.get("system", {})
    points = displacements(mobile, request.nfree) if mobile else []
    reduction = plan_reduction(
        parsed.atoms,
        mobile,
        points,
        mode=request.symmetry,
        kpts=parsed.kpts,
        koffset=parsed.koffset,
    )
    return InputPreview(
        natoms=natoms,
        formula=hill_formula(symbols),
        atoms=atoms,
        cell=[[round(float(x), 8) for x in row] for row in parsed.atoms.cell.array],
        species=[
            SpeciesView(
                label=label,
                element=symbols[parsed.labels.index(label)] if label in parsed.labels else label,
                mass=parsed.masses[label],
                pseudopotential=pseudo,
            )
            for label, pseudo in parsed.species.items()
        ],
        kpoints=KPointsView(
            mode="gamma" if parsed.kpts is None else "automatic",
            grid=None if parsed.kpts is None else list(parsed.kpts),
            shift=list(parsed.koffset),
        ),
        ecutwfc=_number(system.get("ecutwfc")),
        ecutrho=_number(system.get("ecutrho")),
        engine=engine,
        mobile_default=default,
        mobile=mobile,
        free_molecule=not fixed and not partial and len(mobile) == natoms,
        tasks=len(points),
        tasks_symmetric=len(reduction.computed),
        spacegroup=reduction.spacegroup,
        symmetry_operations=len(reduction.operations) if reduction.images else 0,
        partly_frozen=partly_frozen,
        warnings=warnings,
    )


def input_warnings(
    parsed: ParsedInput, request: JobRequest, engine: str, settings: PreviewSettings
) -> list[InputWarning]:
    """Warnings about an input that runs but is probably not what the user wants."""
    found: list[InputWarning] = []
    pairs = _overlapping_pairs(parsed)
    if pairs:
        shown = ", ".join(f"{i} and {j} ({d:.2f} Å)" for i, j, d in pairs[:5])
        more = f" and {len(pairs) - 5} more pairs" if len(pairs) > 5 else ""
        found.append(
            InputWarning(
                code="atoms_overlap",
                message=f"atoms closer than {OVERLAP_ANGSTROM} Å (0-based): {shown}{more}; "
                "a position line given twice?",
            )
        )
    if engine == "qe":
        found += _qe_warnings(parsed, settings)
    if request.delta < SMALL_DELTA_ANGSTROM:
        found.append(
            InputWarning(
                code="small_delta",
                message=f"δ = {request.delta} Å is small: the force differences may drown "
                f"in SCF noise (0.01 Å is usual; at least {SMALL_DELTA_ANGSTROM} Å)",
            )
        )
    elif request.delta > LARGE_DELTA_ANGSTROM:
        found.append(
            InputWarning(
                code="large_delta",
                message=f"δ = {request.delta} Å is large: anharmonicity shifts the "
                f"frequencies (0.01 Å is usual; at most {LARGE_DELTA_ANGSTROM} Å)",
            )
        )
    return found


def _qe_warnings(parsed: ParsedInput, settings: PreviewSettings) -> list[InputWarning]:
    found: list[InputWarning] = []
    if parsed.calculation != "scf":
        found.append(
            InputWarning(
                code="calculation_overridden",
                message=f"calculation = '{parsed.calculation}' runs as one SCF with forces "
                "per displacement: the structure is not relaxed first",
            )
        )
    conv_thr = parsed.input_data.get("electrons", {}).get("conv_thr")
    given = isinstance(conv_thr, int | float) and not isinstance(conv_thr, bool)
    threshold = float(conv_thr) if isinstance(conv_thr, int | float) else PW_DEFAULT_CONV_THR_RY
    if threshold > LOOSE_CONV_THR_RY:
        said = f"conv_thr = {threshold:g} Ry" if given else "conv_thr is not set (pw.x: 1e-6 Ry)"
        found.append(
            InputWarning(
                code="loose_conv_thr",
                message=f"{said}: finite-difference forces need a tight SCF; use "
                f"{LOOSE_CONV_THR_RY:g} Ry or less (1e-10 is common)",
            )
        )
    if settings.execution_mode == "inprocess":
        # Only here does this process know the workers' pseudopotential directory.
        missing = sorted(
            name
            for name in set(parsed.species.values())
            if not (Path(settings.pseudo_dir) / name).is_file()
        )
        if missing:
            found.append(
                InputWarning(
                    code="missing_pseudopotential",
                    message=f"not found in the workers' pseudopotential directory: "
                    f"{', '.join(missing)}; the job would fail",
                )
            )
    return found


def _overlapping_pairs(parsed: ParsedInput) -> list[tuple[int, int, float]]:
    """Pairs of atoms closer than ``OVERLAP_ANGSTROM`` (periodic images included)."""
    atoms = parsed.atoms
    if len(atoms) < 2:
        return []
    i, j, d = neighbor_list("ijd", atoms, OVERLAP_ANGSTROM, self_interaction=False)
    return sorted(
        (int(a), int(b), float(dist)) for a, b, dist in zip(i, j, d, strict=True) if a < b
    )


class Bounds(BaseModel):
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None


class Limits(BaseModel):
    max_input_bytes: int
    max_mobile_atoms: int
    delta: Bounds
    temperature: Bounds
    nfree: list[int]


class RequestDefaults(BaseModel):
    delta: float
    temperature: float
    nfree: int


class ClientConfig(BaseModel):
    """What a client may choose, and what it gets by default."""

    engines: list[str]
    default_engine: str
    execution_mode: str
    limits: Limits
    defaults: RequestDefaults
    poll_retry_after_seconds: int


def client_config(settings: PreviewSettings) -> ClientConfig:
    """Engines, limits and request defaults, for clients that build a submission form."""
    fields = JobRequest.model_fields
    return ClientConfig(
        engines=settings.engines,
        default_engine=settings.default_engine,
        execution_mode=settings.execution_mode,
        limits=Limits(
            max_input_bytes=settings.max_input_bytes,
            max_mobile_atoms=settings.max_mobile_atoms,
            delta=_bounds("delta"),
            temperature=_bounds("temperature"),
            nfree=list(get_args(fields["nfree"].annotation)),
        ),
        defaults=RequestDefaults(
            delta=fields["delta"].default,
            temperature=fields["temperature"].default,
            nfree=fields["nfree"].default,
        ),
        poll_retry_after_seconds=settings.poll_retry_after_seconds,
    )


def _bounds(field: str) -> Bounds:
    """The numeric constraints pydantic enforces on a ``JobRequest`` field."""
    found: dict[str, float] = {}
    for item in JobRequest.model_fields[field].metadata:
        for key in ("gt", "ge", "lt", "le"):
            value = getattr(item, key, None)
            if isinstance(value, int | float):
                found[key] = float(value)
    return Bounds(**found)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
