"""What a client needs before it submits: the parsed structure and the service's options.

``preview_request`` reads a submission the way ``JobService.plan`` does (same
parser, same mobile-atom rules, same engine check) but builds no tasks and
stores nothing, so a UI can show the structure as soon as the text is pasted.
``client_config`` describes the engines, limits and defaults a client may use.
"""

from __future__ import annotations

from typing import Literal, get_args

from ase.formula import Formula
from pydantic import BaseModel, Field

from zpe_core.analysis import displacements
from zpe_core.errors import InputError
from zpe_core.models import JobRequest
from zpe_core.qe_input import (
    check_species_labels,
    parse_qe_input,
    select_mobile,
)
from zpe_core.settings import Settings


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
    warnings: list[str]


def resolve_engine(requested: str | None, settings: Settings) -> str:
    """The engine a request runs on; :class:`InputError` if the server does not offer it."""
    engine = requested or settings.default_engine
    if engine not in settings.engines:
        raise InputError(
            f"engine {engine!r} is not offered here; choose one of {settings.engines}",
            code="unknown_engine",
        )
    return engine


def preview_request(request: JobRequest, settings: Settings) -> InputPreview:
    """Parse and check a submission; raise :class:`InputError` with a code on any problem.

    Without ``mobile`` the default selection (every atom not fully fixed) is
    shown even when it exceeds ``max_mobile_atoms``, with a warning, so the
    user can narrow it down; an explicit ``mobile`` list is checked exactly as
    a submission is.
    """
    engine = resolve_engine(request.engine, settings)
    parsed = parse_qe_input(request.input_text, max_bytes=settings.max_input_bytes)
    check_species_labels(parsed)
    natoms = len(parsed.atoms)
    fixed = set(parsed.fixed_indices)
    partial = set(parsed.partially_fixed_indices)
    default = [i for i in range(natoms) if i not in fixed]
    warnings: list[str] = []
    if request.mobile is None:
        mobile = default
        if not mobile:
            warnings.append("every atom is fixed (if_pos 0 0 0): there is nothing to displace")
        elif len(mobile) > settings.max_mobile_atoms:
            warnings.append(
                f"{len(mobile)} atoms are not fixed but at most {settings.max_mobile_atoms} "
                "can be mobile: choose the atoms to displace"
            )
    else:
        mobile = select_mobile(parsed, request.mobile, max_mobile=settings.max_mobile_atoms)
    if partial:
        warnings.append(
            f"atoms {sorted(partial)} are only partly fixed (some if_pos 0); "
            "if mobile they are displaced along x, y and z"
        )
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
    return InputPreview(
        natoms=natoms,
        formula=str(Formula.from_list(symbols).format("hill")),
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
        tasks=len(displacements(mobile, request.nfree)) if mobile else 0,
        warnings=warnings,
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


def client_config(settings: Settings) -> ClientConfig:
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
