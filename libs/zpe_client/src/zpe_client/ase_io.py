"""ASE objects in and out (the ``ase`` extra): a pw.x input from an ``Atoms``, and the
result's ``VibrationsData``. Imported only when one of them is used."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from ase import Atoms
from ase.io.espresso import write_espresso_in
from ase.io.jsonio import decode
from ase.vibrations import VibrationsData


def pw_input(
    atoms: Atoms,
    *,
    input_data: Mapping[str, Any] | None = None,
    pseudopotentials: Mapping[str, str],
    kpts: Sequence[int] | None = None,
    koffset: Sequence[int] = (0, 0, 0),
) -> str:
    """The pw.x input of ``atoms`` (``ase.io.espresso``): fixed atoms (``FixAtoms``) are
    written as such, and ``input_data`` holds the namelist keys, nested
    (``{"system": {"ecutwfc": 30}}``) or flat (``{"ecutwfc": 30}``)."""
    missing = sorted(set(atoms.get_chemical_symbols()) - set(pseudopotentials))
    if missing:
        raise ValueError(f"pseudopotentials: no file for {', '.join(missing)}")
    out = io.StringIO()
    write_espresso_in(
        out,
        atoms,
        input_data=dict(input_data or {}),
        pseudopotentials=dict(pseudopotentials),
        kpts=tuple(kpts) if kpts is not None else None,
        koffset=tuple(koffset),
    )
    return _drop_empty_namelists(out.getvalue())


#: Namelists pw.x needs even when empty; ASE also writes empty ones that pw.x 6.x does
#: not know (``&FCP``, ``&RISM``), which the API refuses.
_REQUIRED = ("&CONTROL", "&SYSTEM", "&ELECTRONS")


def _drop_empty_namelists(text: str) -> str:
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    i = 0
    while i < len(lines):
        name = lines[i].strip().upper()
        empty = i + 1 < len(lines) and lines[i + 1].strip() == "/"
        if name.startswith("&") and empty and name not in _REQUIRED:
            i += 2
            continue
        kept.append(lines[i])
        i += 1
    return "".join(kept)


def is_atoms(value: object) -> bool:
    return isinstance(value, Atoms)


def read_vibrations(data: bytes) -> VibrationsData:
    """The ``vibrations`` file of a job (ASE's own JSON of a ``VibrationsData``)."""
    vibrations = decode(data.decode("utf-8"))
    if not isinstance(vibrations, VibrationsData):
        raise ValueError(f"not a VibrationsData: {type(vibrations).__name__}")
    return vibrations
