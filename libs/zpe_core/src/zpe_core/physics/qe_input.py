"""Parse and validate a Quantum ESPRESSO ``pw.x`` input, on top of ASE.

ASE reads the namelists (``read_fortran_namelist``) and builds the atoms
(``read_espresso_in``). ASE's reader has quirks that this module shields
users from: it only accepts ``ibrav = 0``, ignores the ``A`` lattice
parameter, matches card names case-sensitively, chokes on inline comments,
silently ignores extra lines, and raises bare ``ValueError`` / ``KeyError`` /
``StopIteration``. So the cards are split and checked here, a canonical
``ibrav = 0`` text is handed to ASE, and every failure becomes an
:class:`~zpe_core.errors.InputError` with a stable ``code``.

The namelists returned are already turned into an SCF with forces
(:func:`force_scf`): whatever the user asked for, a task is one SCF.
"""

from __future__ import annotations

import copy
import io
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ase.io.espresso as _ase_espresso_module
import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms, FixCartesian
from ase.data import chemical_symbols
from ase.units import Bohr

from zpe_core.errors import InputError, InputTooLarge
from zpe_core.physics.namelists import (
    DROPPED_NAMELISTS,
    NAMELIST_KEYS,
    InputLimits,
    check_namelists,
    check_pseudo_name,
    role_of,
)

MAX_INPUT_BYTES_DEFAULT = 1024 * 1024

# ASE's espresso helpers carry no annotations; calling them through Any keeps strict mypy quiet.
_ase_espresso: Any = _ase_espresso_module

# Namelists pw.x knows that this service can pass on (FCP / RISM need extra machinery);
# which keys of them reach pw.x is decided by zpe_core.physics.namelists (one table).
_KNOWN_NAMELISTS = (*NAMELIST_KEYS, *DROPPED_NAMELISTS)

_CARDS_USED = ("ATOMIC_SPECIES", "ATOMIC_POSITIONS", "K_POINTS", "CELL_PARAMETERS")
# Only meaningful for relax / MD, which are forced away; accepted and dropped.
_CARDS_IGNORED = ("CONSTRAINTS", "ATOMIC_VELOCITIES")
# Would change the physics if silently dropped.
_CARDS_REJECTED = ("OCCUPATIONS", "ATOMIC_FORCES", "ADDITIONAL_K_POINTS", "HUBBARD", "SOLVENTS")
_ALL_CARDS = _CARDS_USED + _CARDS_IGNORED + _CARDS_REJECTED

# NUL and other C0 controls a text file never holds (tab, newlines, form feed are fine).
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_KEY_RE = re.compile(r"^[a-z_][a-z0-9_]*(\(\s*\d+(\s*,\s*\d+)*\s*\))?$")
_OPTION_RE = re.compile(r"^[({]?\s*([A-Za-z_]*)\s*[)}]?$")
_POSITION_UNITS = ("alat", "bohr", "angstrom", "crystal")
_CELL_UNITS = ("alat", "bohr", "angstrom")
_SUPPORTED_IBRAV = (0, 1, 2, 3, -3, 4, 6, 7, 8, 14)
_KPOINTS_FORMS = "'K_POINTS gamma', 'K_POINTS automatic' (also '(automatic)' or '{automatic}')"


@dataclass(frozen=True)
class ParsedInput:
    """A validated ``pw.x`` input.

    ``atoms`` has positions in Angstrom, the cell, ``pbc=True`` and no
    constraints; fixed flags are reported in ``fixed_indices`` (all three
    ``if_pos`` zero) and ``partially_fixed_indices``. ``input_data`` holds
    the namelists (lower-case names and keys) already forced to an SCF with
    forces. ``kpts`` is ``None`` for the Gamma point.
    """

    atoms: Atoms
    species: dict[str, str]
    masses: dict[str, float]
    labels: list[str]
    input_data: dict[str, dict[str, Any]]
    kpts: tuple[int, int, int] | None
    koffset: tuple[int, int, int]
    fixed_indices: list[int]
    partially_fixed_indices: list[int]
    pseudo_dir: str | None
    #: The ``calculation`` the input asked for (lower case); it always runs as an SCF.
    calculation: str = "scf"


@dataclass
class _Card:
    name: str
    option: str  # lower-case, brackets removed; "" when absent
    header: str
    lines: list[str]


def parse_qe_input(
    text: str, *, max_bytes: int = MAX_INPUT_BYTES_DEFAULT, limits: InputLimits | None = None
) -> ParsedInput:
    """Parse and validate a ``pw.x`` input; raise :class:`InputError` on any problem.

    ``limits`` caps the atoms, k-points and bounded namelist values (defaults:
    :class:`~zpe_core.physics.namelists.InputLimits`); they are checked before the atoms are built.
    """
    limits = limits or InputLimits()
    _check_text(text, max_bytes)
    # A byte-order mark would hide the first '&' from ASE's namelist reader.
    namelists, card_lines = _read_namelists(text.removeprefix("\ufeff"))
    # Unknown keys and unsafe values are refused before anything else is looked at.
    check_namelists(namelists, limits)
    if "system" not in namelists:
        raise InputError(
            "the &SYSTEM namelist is missing (it must give ibrav, nat, ntyp and ecutwfc)",
            code="missing_namelist",
        )
    system = namelists["system"]
    ibrav = _int_key(system, "ibrav", minimum=None)
    nat = _int_key(system, "nat", minimum=1)
    if nat > limits.max_atoms:
        raise InputError(
            f"&SYSTEM nat = {nat}: at most {limits.max_atoms} atoms are accepted",
            code="too_many_atoms",
        )
    ntyp = _int_key(system, "ntyp", minimum=1)
    _check_ecut(system)

    cards = _split_cards(card_lines)
    species_card = _require_card(cards, "ATOMIC_SPECIES")
    positions_card = _require_card(cards, "ATOMIC_POSITIONS")
    kpoints_card = _require_card(cards, "K_POINTS")
    cell_card = cards.get("CELL_PARAMETERS")

    species, masses = _parse_species(species_card, ntyp)
    labels = _parse_positions(positions_card, nat, species)
    alat = _alat_angstrom(system, ibrav)
    if ibrav == 0:
        if cell_card is None:
            raise InputError(
                "ibrav = 0 needs a CELL_PARAMETERS card (the cell is not given otherwise)",
                code="missing_block",
            )
        cell_text = _cell_card_text(cell_card, alat)
    else:
        if cell_card is not None:
            raise InputError(
                f"CELL_PARAMETERS given together with ibrav = {ibrav}; "
                "use ibrav = 0 with CELL_PARAMETERS, or celldm without the card",
                code="bad_card",
            )
        assert alat is not None  # _alat_angstrom insists on it when ibrav != 0
        cell = _ibrav_cell(ibrav, system, alat)
        rows = "\n".join(" ".join(repr(float(x)) for x in row / alat) for row in cell)
        cell_text = f"CELL_PARAMETERS alat\n{rows}\n"
    kpts, koffset = _parse_kpoints(kpoints_card)
    if kpts is not None and kpts[0] * kpts[1] * kpts[2] > limits.max_kpoints:
        raise InputError(
            f"K_POINTS grid {kpts[0]}x{kpts[1]}x{kpts[2]} exceeds this service's limit of "
            f"{limits.max_kpoints} k-points (nk1*nk2*nk3)",
            code="limit_exceeded",
        )

    elements = {label: _element(label, pseudo) for label, pseudo in species.items()}
    atoms = _build_atoms(species_card, positions_card, cell_text, nat, ntyp, alat, elements)
    fixed, partial = _fixed_from_constraints(atoms)
    atoms.constraints = []

    pseudo_dir = namelists.get("control", {}).get("pseudo_dir")
    if pseudo_dir is not None and not isinstance(pseudo_dir, str):
        raise InputError(
            f"&CONTROL pseudo_dir must be a quoted string, got {pseudo_dir!r}",
            code="bad_namelist",
        )
    calculation = namelists.get("control", {}).get("calculation", "scf")
    return ParsedInput(
        calculation=str(calculation).strip().lower(),
        atoms=atoms,
        species=species,
        masses=masses,
        labels=labels,
        input_data=force_scf(namelists),
        kpts=kpts,
        koffset=koffset,
        fixed_indices=fixed,
        partially_fixed_indices=partial,
        pseudo_dir=pseudo_dir,
    )


def force_scf(input_data: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return a copy of the namelists turned into one SCF that prints forces.

    Keeps only the keys that reach pw.x as written (role ``passed`` in
    :data:`~zpe_core.physics.namelists.NAMELIST_KEYS`) and sets ``calculation = 'scf'``
    and ``tprnfor = .true.``: what the service owns (scratch and pseudopotential
    locations, the lattice, which travels as atoms), output options, relaxation
    settings, ``max_seconds`` and the &IONS / &CELL namelists are dropped.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, section in input_data.items():
        sec = str(name).lower()
        if sec in DROPPED_NAMELISTS:
            continue
        out[sec] = {
            str(k).lower(): _plain(v)
            for k, v in section.items()
            if role_of(sec, str(k)) == "passed"
        }
    control = out.setdefault("control", {})
    control["calculation"] = "scf"
    control["tprnfor"] = True
    return out


def _plain(value: Any) -> Any:
    # ASE reads Fortran '1q-5' as numpy.longdouble; job records need JSON-safe values.
    if isinstance(value, np.floating):
        return float(value)  # .item() keeps a longdouble as it is
    if isinstance(value, np.generic):
        return value.item()
    return copy.deepcopy(value)


def check_species_labels(parsed: ParsedInput) -> None:
    """Every ``ATOMIC_SPECIES`` label must be its element symbol (``Fe1`` is not supported)."""
    symbols = parsed.atoms.get_chemical_symbols()
    for label, symbol in zip(parsed.labels, symbols, strict=True):
        if label != symbol:
            raise InputError(
                f"species label {label!r} differs from its element {symbol!r}; "
                "only element symbols are supported as ATOMIC_SPECIES labels",
                code="unsupported_species_label",
            )


def select_mobile(parsed: ParsedInput, mobile: list[int] | None, *, max_mobile: int) -> list[int]:
    """Validate the atoms to displace and return them sorted.

    ``None`` means every atom that is not fully fixed. Explicit indices are
    0-based and must be in range, unique and not fully fixed (``0 0 0``).
    """
    natoms = len(parsed.atoms)
    fixed = set(parsed.fixed_indices)
    if mobile is None:
        chosen = [i for i in range(natoms) if i not in fixed]
        if not chosen:
            raise InputError(
                "every atom is fixed (if_pos 0 0 0): there is nothing to displace",
                code="mobile_empty",
            )
    else:
        if not mobile:
            raise InputError("the list of mobile atoms is empty", code="mobile_empty")
        if len(mobile) > max(max_mobile, natoms):
            # Before any other look at the list: it may hold hundreds of thousands of entries.
            raise InputError(
                f"{len(mobile)} mobile atoms requested, the limit is {max_mobile}",
                code="too_many_mobile",
            )
        bad = [i for i in mobile if isinstance(i, bool) or not isinstance(i, int)]
        if bad:
            raise InputError(
                f"mobile atom indices must be integers, got {bad[:5]!r}",
                code="mobile_out_of_range",
            )
        out_of_range = sorted({i for i in mobile if not 0 <= i < natoms})
        if out_of_range:
            raise InputError(
                f"mobile atom indices {out_of_range[:10]} are out of range: the input has "
                f"{natoms} atoms, indices are 0-based (0..{natoms - 1})",
                code="mobile_out_of_range",
            )
        duplicates = sorted(i for i, n in Counter(mobile).items() if n > 1)
        if duplicates:
            raise InputError(
                f"mobile atom indices {duplicates[:10]} are listed more than once",
                code="mobile_duplicate",
            )
        fixed_chosen = sorted(fixed.intersection(mobile))
        if fixed_chosen:
            raise InputError(
                f"mobile atoms {fixed_chosen[:10]} are fixed (if_pos 0 0 0) in ATOMIC_POSITIONS",
                code="mobile_fixed",
            )
        chosen = sorted(mobile)
    if len(chosen) > max_mobile:
        raise InputError(
            f"{len(chosen)} mobile atoms requested, the limit is {max_mobile}",
            code="too_many_mobile",
        )
    return chosen


# --- text and namelists ---------------------------------------------------------------


def _check_text(text: str, max_bytes: int) -> None:
    # Characters never outnumber UTF-8 bytes, so this rejects huge inputs before encoding them.
    if len(text) > max_bytes:
        raise InputTooLarge(
            f"the input is larger than the {max_bytes}-byte limit", code="input_too_large"
        )
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InputError(
            "the input is not valid text (it holds undecodable bytes)", code="not_text"
        ) from exc
    if size > max_bytes:
        raise InputTooLarge(
            f"the input is {size} bytes, larger than the {max_bytes}-byte limit",
            code="input_too_large",
        )
    if _CONTROL_CHARS.search(text):
        raise InputError(
            "the input is not a text file (it holds NUL or other control bytes)", code="not_text"
        )
    if not text.strip():
        raise InputError("the input is empty", code="empty_input")


def _read_namelists(text: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    _check_namelist_lines(text)
    try:
        data, card_lines = _ase_espresso.read_fortran_namelist(io.StringIO(text))
    except Exception as exc:  # ASE raises whatever its tokenizer hits
        raise InputError(f"the namelists could not be read: {exc}", code="bad_namelist") from exc
    namelists: dict[str, dict[str, Any]] = {}
    for name, section in data.items():
        if name not in _KNOWN_NAMELISTS:
            known = ", ".join("&" + n.upper() for n in _KNOWN_NAMELISTS)
            raise InputError(
                f"unknown or unsupported namelist &{name.upper()} (supported: {known})",
                code="bad_namelist",
            )
        entries: dict[str, Any] = {}
        for key, value in section.items():
            if not _KEY_RE.match(key):
                raise InputError(
                    f"&{name.upper()} has a malformed key {key!r}", code="bad_namelist"
                )
            if value == "":
                raise InputError(f"&{name.upper()} key {key!r} has no value", code="bad_namelist")
            entries[key] = _plain(value)
        namelists[name] = entries
    return namelists, [str(line) for line in card_lines]


def _check_namelist_lines(text: str) -> None:
    """Catch what ASE's namelist reader silently swallows: repeats and non key=value lines."""
    seen: set[str] = set()
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if current is None:
            if not line.startswith("&"):
                continue
            current = line.split()[0][1:].lower()
            if not current:
                raise InputError(f"line {number}: '&' without a namelist name", code="bad_namelist")
            if current in seen:
                raise InputError(
                    f"namelist &{current.upper()} appears more than once", code="bad_namelist"
                )
            seen.add(current)
            line = line[len(current) + 1 :].strip()
        body, closed = _strip_namelist_line(line)
        if body and "=" not in body:
            card = body.split()[0].upper()
            hint = (
                f" (is &{current.upper()} missing its closing '/' before {card}?)"
                if card in _ALL_CARDS
                else ""
            )
            raise InputError(
                f"line {number} in &{current.upper()} is not 'key = value': {raw.strip()!r}{hint}",
                code="bad_namelist",
            )
        if closed:
            current = None
    if current is not None:
        raise InputError(f"namelist &{current.upper()} is not closed with '/'", code="bad_namelist")


def _strip_namelist_line(line: str) -> tuple[str, bool]:
    """Return the line up to a comment or the closing '/', and whether '/' closed it."""
    in_quotes = False
    for pos, ch in enumerate(line):
        if ch == "'":
            in_quotes = not in_quotes
        elif not in_quotes and ch == "!":
            return line[:pos].strip(), False
        elif not in_quotes and ch == "/":
            return line[:pos].strip(), True
    return line.strip(), False


def _int_key(system: Mapping[str, Any], key: str, *, minimum: int | None) -> int:
    if key not in system:
        raise InputError(f"&SYSTEM must set {key}", code="bad_namelist")
    value = system[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"&SYSTEM {key} must be an integer, got {value!r}", code="bad_namelist")
    if minimum is not None and value < minimum:
        raise InputError(
            f"&SYSTEM {key} must be at least {minimum}, got {value}", code="bad_namelist"
        )
    return value


def _check_ecut(system: Mapping[str, Any]) -> None:
    for key in ("ecutwfc", "ecutrho"):
        value = system.get(key)
        if value is None:
            if key == "ecutwfc":
                raise InputError("&SYSTEM must set ecutwfc", code="bad_namelist")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise InputError(
                f"&SYSTEM {key} must be a positive number (Ry), got {value!r}",
                code="bad_namelist",
            )


# --- cards ----------------------------------------------------------------------------


def _split_cards(card_lines: list[str]) -> dict[str, _Card]:
    cards: dict[str, _Card] = {}
    current: _Card | None = None
    for raw in card_lines:
        # Inline comments: QE tolerates them, ASE's card readers do not.
        line = re.split(r"[!#]", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        first = line.split()[0]
        name = re.split(r"[({]", first, maxsplit=1)[0].upper()
        if name in _ALL_CARDS:
            if name in _CARDS_REJECTED:
                raise InputError(
                    f"the {name} card is not supported by this service", code="bad_card"
                )
            if name in cards:
                raise InputError(f"the {name} card appears more than once", code="bad_card")
            option_text = line[len(name) :].strip()
            match = _OPTION_RE.match(option_text)
            if match is None:
                raise InputError(f"cannot read the option of card {line!r}", code="bad_card")
            current = _Card(name, match.group(1).lower(), line, [])
            cards[name] = current
        elif current is None:
            raise InputError(f"unexpected line outside any card: {raw!r}", code="bad_card")
        else:
            current.lines.append(line)
    return cards


def _require_card(cards: Mapping[str, _Card], name: str) -> _Card:
    card = cards.get(name)
    if card is None:
        raise InputError(f"the {name} card is missing", code="missing_block")
    return card


def _parse_species(card: _Card, ntyp: int) -> tuple[dict[str, str], dict[str, float]]:
    if len(card.lines) != ntyp:
        raise InputError(
            f"&SYSTEM ntyp = {ntyp} but ATOMIC_SPECIES has {len(card.lines)} lines",
            code="bad_card",
        )
    species: dict[str, str] = {}
    masses: dict[str, float] = {}
    for line in card.lines:
        parts = line.split()
        if len(parts) != 3:
            raise InputError(
                f"ATOMIC_SPECIES line {line!r} must be 'label mass pseudopotential-file'",
                code="bad_card",
            )
        label, mass_text, pseudo = parts
        if label in species:
            raise InputError(f"ATOMIC_SPECIES lists {label!r} twice", code="bad_card")
        mass = _float(mass_text, f"the mass of species {label!r}")
        if mass < 0:
            raise InputError(f"the mass of species {label!r} is negative", code="bad_card")
        check_pseudo_name(label, pseudo)
        species[label] = pseudo
        masses[label] = mass
    return species, masses


def _parse_positions(card: _Card, nat: int, species: Mapping[str, str]) -> list[str]:
    """Check the atom lines (ASE converts them) and return the label of each atom."""
    if card.option == "crystal_sg":
        raise InputError("ATOMIC_POSITIONS crystal_sg is not supported", code="bad_card")
    if card.option not in ("", *_POSITION_UNITS):
        raise InputError(
            f"unknown ATOMIC_POSITIONS unit {card.option!r} (use one of {_POSITION_UNITS})",
            code="bad_card",
        )
    if len(card.lines) != nat:
        raise InputError(
            f"&SYSTEM nat = {nat} but ATOMIC_POSITIONS has {len(card.lines)} atom lines",
            code="nat_mismatch",
        )
    labels: list[str] = []
    for index, line in enumerate(card.lines):
        parts = line.split()
        if len(parts) not in (4, 7):
            raise InputError(
                f"ATOMIC_POSITIONS line {index + 1} {line!r} must be 'label x y z' "
                "optionally followed by three 0/1 flags",
                code="bad_card",
            )
        label = parts[0]
        if label not in species:
            raise InputError(
                f"ATOMIC_POSITIONS lists species {label!r} that has no ATOMIC_SPECIES line "
                "(no pseudopotential)",
                code="unknown_species",
            )
        for text in parts[1:4]:
            _coordinate(text, index)
        if len(parts) == 7 and any(flag not in ("0", "1") for flag in parts[4:]):
            raise InputError(
                f"ATOMIC_POSITIONS line {index + 1}: if_pos flags must be 0 or 1, "
                f"got {' '.join(parts[4:])!r}",
                code="bad_card",
            )
        labels.append(label)
    return labels


def _coordinate(text: str, index: int) -> float:
    try:
        value = float(_ase_espresso.infix_float(text))
    except Exception as exc:  # infix_float fails with TypeError, ValueError, ...
        raise InputError(
            f"ATOMIC_POSITIONS line {index + 1}: cannot read coordinate {text!r}", code="bad_card"
        ) from exc
    if not math.isfinite(value):
        raise InputError(
            f"ATOMIC_POSITIONS line {index + 1}: coordinate {text!r} is not finite",
            code="bad_card",
        )
    return value


def _float(text: str, what: str) -> float:
    try:
        value = float(_ase_espresso.ffloat(text))
    except (ValueError, TypeError) as exc:
        raise InputError(f"cannot read {what} from {text!r}", code="bad_card") from exc
    if not math.isfinite(value):
        raise InputError(f"{what} is not finite ({text!r})", code="bad_card")
    return value


def _cell_card_text(card: _Card, alat: float | None) -> str:
    if card.option not in ("", *_CELL_UNITS):
        raise InputError(
            f"unknown CELL_PARAMETERS unit {card.option!r} (use one of {_CELL_UNITS})",
            code="bad_card",
        )
    if card.option == "alat" and alat is None:
        raise InputError(
            "CELL_PARAMETERS alat needs celldm(1) or A in &SYSTEM", code="bad_namelist"
        )
    if card.option in ("bohr", "angstrom") and alat is not None:
        raise InputError(
            f"CELL_PARAMETERS {card.option} conflicts with celldm(1)/A in &SYSTEM "
            "(the lattice parameter is given twice)",
            code="bad_card",
        )
    if len(card.lines) != 3:
        raise InputError(
            f"CELL_PARAMETERS must have 3 lines, found {len(card.lines)}", code="bad_card"
        )
    for line in card.lines:
        parts = line.split()
        if len(parts) != 3:
            raise InputError(f"CELL_PARAMETERS line {line!r} must hold 3 numbers", code="bad_card")
        for part in parts:
            _float(part, "a CELL_PARAMETERS component")
    # Without a unit QE (and ASE) read alat if a lattice parameter is set, else bohr.
    unit = card.option or ("alat" if alat is not None else "bohr")
    return f"CELL_PARAMETERS {unit}\n" + "\n".join(card.lines) + "\n"


def _parse_kpoints(card: _Card) -> tuple[tuple[int, int, int] | None, tuple[int, int, int]]:
    if card.option == "gamma":
        if card.lines:
            raise InputError(
                f"K_POINTS gamma takes no data lines, found {card.lines[0]!r}", code="bad_card"
            )
        return None, (0, 0, 0)
    if card.option != "automatic":
        form = card.option or "tpiba (the default)"
        raise InputError(f"K_POINTS {form} is not supported: use {_KPOINTS_FORMS}", code="bad_card")
    if len(card.lines) != 1:
        raise InputError(
            f"K_POINTS automatic needs exactly one line 'nk1 nk2 nk3 sk1 sk2 sk3', "
            f"found {len(card.lines)}",
            code="bad_card",
        )
    parts = card.lines[0].split()
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if (
        len(values) != 6
        or any(n < 1 for n in values[:3])
        or any(s not in (0, 1) for s in values[3:])
    ):
        raise InputError(
            f"K_POINTS automatic line {card.lines[0]!r} must be six integers "
            "'nk1 nk2 nk3 sk1 sk2 sk3' with nk >= 1 and shifts 0 or 1",
            code="bad_card",
        )
    return (values[0], values[1], values[2]), (values[3], values[4], values[5])


# --- cell and atoms -------------------------------------------------------------------


def _system_float(system: Mapping[str, Any], key: str) -> float | None:
    value = system.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"&SYSTEM {key} must be a number, got {value!r}", code="bad_namelist")
    if not math.isfinite(float(value)):
        raise InputError(f"&SYSTEM {key} is not finite", code="bad_namelist")
    return float(value)


def _celldm(system: Mapping[str, Any]) -> dict[int, float]:
    out: dict[int, float] = {}
    for key in system:
        match = re.match(r"^celldm\(\s*(\d)\s*\)$", key)
        if match:
            index = int(match.group(1))
            if not 1 <= index <= 6:
                raise InputError(f"&SYSTEM has no key {key}", code="bad_namelist")
            value = _system_float(system, key)
            assert value is not None
            out[index] = value
    return out


def _alat_angstrom(system: Mapping[str, Any], ibrav: int) -> float | None:
    """The lattice parameter in Angstrom (celldm(1) in bohr or A), if given."""
    celldm = _celldm(system)
    a = _system_float(system, "a")
    if celldm and a is not None:
        raise InputError(
            "&SYSTEM gives both celldm and A/B/C: use one of them", code="bad_namelist"
        )
    alat = celldm[1] * Bohr if 1 in celldm else a
    if alat is not None and not alat > 0:
        raise InputError("&SYSTEM celldm(1) / A must be positive", code="bad_namelist")
    if ibrav != 0 and alat is None:
        raise InputError(f"ibrav = {ibrav} needs celldm(1) or A in &SYSTEM", code="bad_namelist")
    return alat


def _ibrav_cell(ibrav: int, system: Mapping[str, Any], alat: float) -> np.ndarray[Any, Any]:
    """Lattice vectors (Angstrom) of a Bravais lattice, QE conventions (pw.x INPUT_PW)."""
    if ibrav not in _SUPPORTED_IBRAV:
        raise InputError(
            f"ibrav = {ibrav} is not supported (supported: {_SUPPORTED_IBRAV}); "
            "give the cell with ibrav = 0 and CELL_PARAMETERS",
            code="bad_namelist",
        )
    celldm = _celldm(system)
    if not celldm and (a := _system_float(system, "a")) is not None:
        # A, B, C, cosBC, cosAC, cosAB map onto celldm(1..6) (INPUT_PW).
        for index, key in ((2, "b"), (3, "c")):
            value = _system_float(system, key)
            if value is not None:
                celldm[index] = value / a
        for index, key in ((4, "cosbc"), (5, "cosac"), (6, "cosab")):
            value = _system_float(system, key)
            if value is not None:
                celldm[index] = value

    def need(index: int) -> float:
        if index not in celldm:
            raise InputError(
                f"ibrav = {ibrav} needs celldm({index}) in &SYSTEM", code="bad_namelist"
            )
        return celldm[index]

    a = alat
    if ibrav == 1:
        cell = [[a, 0, 0], [0, a, 0], [0, 0, a]]
    elif ibrav == 2:
        cell = [[-a / 2, 0, a / 2], [0, a / 2, a / 2], [-a / 2, a / 2, 0]]
    elif ibrav == 3:
        cell = [[a / 2, a / 2, a / 2], [-a / 2, a / 2, a / 2], [-a / 2, -a / 2, a / 2]]
    elif ibrav == -3:
        cell = [[-a / 2, a / 2, a / 2], [a / 2, -a / 2, a / 2], [a / 2, a / 2, -a / 2]]
    elif ibrav == 4:
        c = need(3) * a
        cell = [[a, 0, 0], [-a / 2, a * math.sqrt(3) / 2, 0], [0, 0, c]]
    elif ibrav == 6:
        cell = [[a, 0, 0], [0, a, 0], [0, 0, need(3) * a]]
    elif ibrav == 7:
        c = need(3) * a
        cell = [[a / 2, -a / 2, c / 2], [a / 2, a / 2, c / 2], [-a / 2, -a / 2, c / 2]]
    elif ibrav == 8:
        cell = [[a, 0, 0], [0, need(2) * a, 0], [0, 0, need(3) * a]]
    else:  # 14, triclinic
        b, c = need(2) * a, need(3) * a
        cos_bc, cos_ac, cos_ab = need(4), need(5), need(6)
        sin_ab = math.sqrt(max(0.0, 1 - cos_ab**2))
        volume_term = 1 + 2 * cos_bc * cos_ac * cos_ab - cos_bc**2 - cos_ac**2 - cos_ab**2
        if sin_ab <= 0 or volume_term <= 0:
            raise InputError("ibrav = 14: the cell angles do not form a cell", code="bad_namelist")
        cell = [
            [a, 0, 0],
            [b * cos_ab, b * sin_ab, 0],
            [
                c * cos_ac,
                c * (cos_bc - cos_ac * cos_ab) / sin_ab,
                c * math.sqrt(volume_term) / sin_ab,
            ],
        ]
    return np.array(cell, dtype=float)


def _element(label: str, pseudo: str) -> str:
    """The element of a species: from its label as ASE reads it, else from the file name.

    pw.x takes the element from the pseudopotential, so labels such as ``D`` or
    ``Q1`` are legal; ASE only understands labels starting with a symbol.
    """
    try:
        symbol = str(_ase_espresso.label_to_symbol(label))
    except Exception:  # KeyError for labels that start with no element symbol
        symbol = "X"
    if symbol != "X":
        return symbol
    prefix = re.split(r"[._\-]", pseudo, maxsplit=1)[0]
    candidate = prefix[:1].upper() + prefix[1:].lower()
    if candidate in chemical_symbols and candidate != "X":
        return candidate
    raise InputError(
        f"cannot tell the element of species {label!r} from its label or from "
        f"its pseudopotential file name {pseudo!r}",
        code="bad_card",
    )


def _build_atoms(
    species: _Card,
    positions: _Card,
    cell_text: str,
    nat: int,
    ntyp: int,
    alat: float | None,
    elements: Mapping[str, str],
) -> Atoms:
    """Hand ASE a canonical ibrav = 0 text built from the checked cards (labels -> elements)."""
    species_lines = [" ".join([elements[ln.split()[0]], *ln.split()[1:]]) for ln in species.lines]
    position_lines = [
        " ".join([elements[ln.split()[0]], *ln.split()[1:]]) for ln in positions.lines
    ]
    system = f"ibrav = 0, nat = {nat}, ntyp = {ntyp}"
    if alat is not None:
        # ASE ignores A (it looks up 'A' after lower-casing keys), so always pass celldm(1).
        system += f", celldm(1) = {alat / Bohr!r}"
    unit = positions.option or "alat"
    text = (
        f"&SYSTEM\n{system}\n/\n"
        "ATOMIC_SPECIES\n" + "\n".join(species_lines) + "\n"
        f"{cell_text}"
        f"ATOMIC_POSITIONS {unit}\n" + "\n".join(position_lines) + "\n"
    )
    if unit == "alat" and alat is None:
        raise InputError(
            "ATOMIC_POSITIONS in alat units needs celldm(1) or A in &SYSTEM", code="bad_card"
        )
    try:
        atoms = _ase_espresso.read_espresso_in(io.StringIO(text))
    except Exception as exc:  # ASE raises ValueError, KeyError, StopIteration, ...
        raise InputError(f"the structure could not be read: {exc}", code="bad_card") from exc
    if not isinstance(atoms, Atoms) or len(atoms) != nat:
        raise InputError("the structure could not be read", code="bad_card")
    cell = np.asarray(atoms.cell[:], dtype=float)
    if not np.all(np.isfinite(cell)) or abs(float(np.linalg.det(cell))) < 1e-6:
        raise InputError("the cell is degenerate (zero volume)", code="bad_card")
    if not np.all(np.isfinite(atoms.positions)):
        raise InputError("atomic positions are not finite", code="bad_card")
    return atoms


def _fixed_from_constraints(atoms: Atoms) -> tuple[list[int], list[int]]:
    """Read ASE's if_pos translation: FixAtoms = all fixed, FixCartesian = some fixed."""
    fixed: set[int] = set()
    partial: set[int] = set()
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            fixed.update(int(i) for i in constraint.index)
        elif isinstance(constraint, FixCartesian):
            indices = [int(i) for i in constraint.index]
            if bool(np.all(constraint.mask)):
                fixed.update(indices)
            elif bool(np.any(constraint.mask)):
                partial.update(indices)
        else:  # pragma: no cover - ASE only produces the two above
            raise InputError("unexpected constraint in the input", code="bad_card")
    return sorted(fixed), sorted(partial - fixed)
