"""The one table of ``pw.x`` namelist keys this service accepts, and how they reach pw.x.

Every key a user may write is listed in :data:`NAMELIST_KEYS` with its Fortran
type and its *role*:

``passed``
    reaches pw.x as the user wrote it (after the checks below) and is part of the
    task key;
``owned``
    the engine sets it itself (scratch paths, the calculation, the geometry that
    travels as atoms); the user's value is dropped;
``dropped``
    accepted so ordinary inputs still parse, but never reaches pw.x (output
    options, relaxation-only settings, ``max_seconds``: the engine owns the timeout).

Keys that are not in the table are refused (``unknown_namelist_key``), as are
values of the wrong type, non-finite numbers and strings outside
:data:`SAFE_STRING` (``unsafe_namelist_value``). &IONS and &CELL only matter for
relaxations and MD, which are forced to one SCF: they are accepted and dropped
whole. Bounded keys (:class:`InputLimits`) answer ``limit_exceeded`` with the limit.

The same checks run twice: when a job is planned (:func:`check_namelists`) and
on the worker before it writes an input (:func:`engine_namelists`), which does
not trust the spec the control plane stored. Strings are written by
:func:`fortran_string` (single quotes, inner quotes doubled). See docs/security.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from zpe_client.models import TaskSpec
from zpe_core.errors import EngineError, InputError

Role = Literal["passed", "owned", "dropped"]
Kind = type[bool] | type[int] | type[float] | type[str]


@dataclass(frozen=True)
class KeyRule:
    """What one namelist key may hold and what happens to it."""

    kind: Kind
    role: Role = "passed"
    choices: frozenset[str] | None = None  # for strings: the only values accepted
    limit: str | None = None  # the InputLimits field bounding it (numbers)


def _rules(role: Role, kind: Kind, *names: str, **extra: Any) -> dict[str, KeyRule]:
    return {name: KeyRule(kind, role, **extra) for name in names}


_P: Role = "passed"
_O: Role = "owned"
_D: Role = "dropped"

_SEMILOCAL_FUNCTIONALS = (
    *("pz", "lda", "pw", "vwn", "pbe", "pbesol", "revpbe", "rpbe", "pw91", "blyp", "bp"),
    *("olyp", "wc", "b86bpbe", "q2d", "optbk88", "optb86b", "sogga", "hcth", "tpss", "scan"),
    *("m06l", "rvv10", "vdw-df", "vdw-df2", "vdw-df-cx", "vdw-df-c09", "vdw-df2-c09"),
    *("vdw-df-ob86", "vdw-df2-b86r", "vdw-df-obk8"),
)

#: Namelist -> key -> rule. The only place that says which keys reach pw.x.
NAMELIST_KEYS: dict[str, dict[str, KeyRule]] = {
    "control": {
        **_rules(_O, str, "calculation", "outdir", "prefix", "pseudo_dir", "disk_io", "wfcdir"),
        **_rules(_O, bool, "tprnfor"),
        **_rules(_D, str, "title", "verbosity", "restart_mode"),
        **_rules(_D, int, "iprint", "nstep", "isave"),
        **_rules(_D, float, "max_seconds", "etot_conv_thr", "forc_conv_thr", "dt"),
        **_rules(_D, bool, "wf_collect", "tstress", "lkpoint_dir"),
        **_rules(_P, bool, "tefield", "dipfield"),
    },
    "system": {
        **_rules(_O, int, "ibrav", "nat", "ntyp"),
        **_rules(_O, float, "a", "b", "c", "cosab", "cosac", "cosbc"),
        "ecutwfc": KeyRule(float, limit="max_ecutwfc"),
        "ecutrho": KeyRule(float, limit="max_ecutrho"),
        "nbnd": KeyRule(int, limit="max_nbnd"),
        **_rules(_P, float, "tot_charge", "degauss", "ecfixed", "qcutz", "q2sigma"),
        **_rules(_P, str, "occupations", "smearing", "assume_isolated", "vdw_corr"),
        **_rules(_P, bool, "nosym", "nosym_evc", "noinv", "no_t_rev", "force_symmorphic"),
        **_rules(_P, bool, "use_all_frac", "london", "xdm", "ts_vdw_isolated"),
        **_rules(_P, float, "london_s6", "london_rcut", "xdm_a1", "xdm_a2", "ts_vdw_econv_thr"),
        **_rules(_P, int, "dftd3_version", "edir"),
        **_rules(_P, bool, "dftd3_threebody"),
        **_rules(_P, float, "emaxpos", "eopreg", "eamp"),
        **_rules(_P, str, "esm_bc"),
        **_rules(_P, float, "esm_w", "esm_efield"),
        **_rules(_P, int, "esm_nfit"),
        **_rules(_P, int, "nr1", "nr2", "nr3", "nr1s", "nr2s", "nr3s", limit="max_fft_grid"),
        # Refused when they ask for spin (_check_closed_shell): closed shell only.
        **_rules(_P, int, "nspin"),
        **_rules(_P, bool, "noncolin", "lspinorb"),
        # Semilocal and vdW-DF functionals only: hybrids (exact exchange) cost orders of
        # magnitude more per SCF, so their keys (nqx*, ecutfock, exx_fraction) are unknown.
        "input_dft": KeyRule(
            str,
            choices=frozenset(_SEMILOCAL_FUNCTIONALS),
        ),
    },
    "electrons": {
        "electron_maxstep": KeyRule(int, limit="max_electron_maxstep"),
        **_rules(_P, float, "conv_thr", "conv_thr_init", "conv_thr_multi", "mixing_beta"),
        **_rules(_P, float, "diago_thr_init"),
        **_rules(_P, int, "mixing_ndim", "diago_cg_maxiter", "diago_david_ndim", limit="max_small"),
        **_rules(_P, str, "mixing_mode", "diagonalization"),
        **_rules(_P, bool, "adaptive_thr", "diago_full_acc", "tqr", "real_space"),
        **_rules(_P, bool, "scf_must_converge"),
        # 'file' would read the scratch directory, which only the engine (warm starts) fills.
        "startingpot": KeyRule(str, choices=frozenset({"atomic"})),
        "startingwfc": KeyRule(str, choices=frozenset({"atomic", "atomic+random", "random"})),
    },
}

#: pw.x's own ``conv_thr`` (Ry) when an input gives none.
PW_DEFAULT_CONV_THR_RY = 1e-6

#: Namelists accepted and dropped whole (a forced SCF reads neither).
DROPPED_NAMELISTS = ("ions", "cell")

#: Characters a string value may hold: printable ASCII except those that mean
#: something to a namelist reader outside quotes (``/ ! & , =``) or escape in other
#: languages (``" \``). Single quotes are allowed: they are doubled when written.
SAFE_STRING = re.compile(r"^(?! )[A-Za-z0-9 _.+\-()'*:;]{1,64}(?<! )$")
#: A pseudopotential file name: joined to the worker's pseudo_dir, so no paths.
SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]{0,127}$")
_INT32 = 2**31 - 1

_INDEXED_KEY = re.compile(r"^([a-z_][a-z0-9_]*)\(\s*(\d+)\s*\)$")


@dataclass(frozen=True)
class InputLimits:
    """Caps on what one task may cost (``ZPE_MAX_*`` settings; see docs/security.md)."""

    max_ecutwfc: float = 200.0
    max_ecutrho: float = 1600.0
    max_nbnd: int = 2000
    max_electron_maxstep: int = 500
    max_kpoints: int = 1000  # nk1 * nk2 * nk3
    max_fft_grid: int = 1000  # nr1 .. nr3s
    max_small: int = 100  # mixing_ndim, diago_david_ndim, diago_cg_maxiter
    max_atoms: int = 200


def rule_for(section: str, key: str) -> KeyRule | None:
    """The rule of ``&section key`` (``celldm(i)`` is an owned geometry key), or None."""
    sec, name = section.lower().lstrip("&"), key.lower().replace(" ", "")
    if sec in DROPPED_NAMELISTS:
        return KeyRule(str, "dropped")
    if sec == "system" and (match := _INDEXED_KEY.match(name)) and match.group(1) == "celldm":
        return KeyRule(float, "owned")
    return NAMELIST_KEYS.get(sec, {}).get(name)


def role_of(section: str, key: str) -> Role | None:
    """``passed``, ``owned``, ``dropped``, or None for a key the service does not know."""
    rule = rule_for(section, key)
    return rule.role if rule is not None else None


def check_namelists(
    namelists: Mapping[str, Mapping[str, Any]], limits: InputLimits
) -> dict[str, dict[str, Any]]:
    """Check every key and value; return the ``passed`` ones by namelist (lower-case).

    Raises :class:`InputError` naming the namelist and key at the first problem.
    """
    out: dict[str, dict[str, Any]] = {}
    for section, values in namelists.items():
        sec = str(section).lower().lstrip("&")
        if sec in DROPPED_NAMELISTS:
            continue
        if sec not in NAMELIST_KEYS:
            raise InputError(
                f"namelist &{sec.upper()} is not accepted (accepted: "
                + ", ".join("&" + n.upper() for n in (*NAMELIST_KEYS, *DROPPED_NAMELISTS))
                + ")",
                code="bad_namelist",
            )
        if sec == "system":
            _check_closed_shell(values)
        kept = out.setdefault(sec, {})
        for key, value in values.items():
            name = str(key).lower().replace(" ", "")
            rule = rule_for(sec, name)
            if rule is None:
                raise InputError(_unknown_message(sec, name), code="unknown_namelist_key")
            _check_value(sec, name, value, rule, limits)
            if rule.role == "passed":
                kept[name] = value
    return out


def _check_closed_shell(system: Mapping[str, Any]) -> None:
    """Refuse spin-polarised inputs rather than compute them wrongly.

    ASE's ``espresso-in`` writer (3.29) rewrites ``starting_magnetization(i)``
    from the atoms' initial magnetic moments and renumbers species, so a
    magnetic input would silently run from zero magnetisation.
    """
    keys = {key.lower(): value for key, value in system.items()}
    magnetic = (
        keys.get("nspin", 1) not in (1, None)
        or keys.get("noncolin") is True
        or keys.get("lspinorb") is True
        or any(key.startswith("starting_magnetization") and value for key, value in keys.items())
    )
    if magnetic:
        raise InputError(
            "spin-polarised inputs (nspin = 2, noncolin, lspinorb, starting_magnetization) "
            "are not supported yet; remove them for a closed-shell calculation",
            code="spin_polarized_unsupported",
        )


def _unknown_message(sec: str, name: str) -> str:
    match = _INDEXED_KEY.match(name)
    if match and match.group(1) in NAMELIST_KEYS.get(sec, {}):
        return f"&{sec.upper()} {name}: indexed (per-species) keys are not supported"
    return (
        f"&{sec.upper()} {name} is not a key this service passes to pw.x "
        "(see the accepted keys in docs/security.md)"
    )


def _check_value(sec: str, name: str, value: Any, rule: KeyRule, limits: InputLimits) -> None:
    where = f"&{sec.upper()} {name}"
    if rule.kind is bool:
        ok = isinstance(value, bool)
    elif rule.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif rule.kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise InputError(
            f"{where} must be {_KIND_NAMES[rule.kind]}, got {value!r}", code="bad_namelist"
        )
    if rule.role != "passed":
        return  # never reaches pw.x: its type is all that matters (forced values are ours)
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where} is not a finite number", code="unsafe_namelist_value")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _INT32:
        raise InputError(f"{where} does not fit a Fortran integer", code="unsafe_namelist_value")
    if isinstance(value, str):
        if not SAFE_STRING.match(value):
            raise InputError(
                f"{where} holds characters that are not accepted in a string value "
                "(1-64 of letters, digits, inner spaces and _.+-()'*:; - no newlines, "
                'no / ! & , = " \\)',
                code="unsafe_namelist_value",
            )
        if rule.choices is not None and value.strip().lower() not in rule.choices:
            raise InputError(
                f"{where} = {value!r} is not accepted; choose one of {sorted(rule.choices)}",
                code="unsupported_namelist_value",
            )
    if rule.limit is not None:
        limit = getattr(limits, rule.limit)
        if not isinstance(value, bool) and value > limit:
            raise InputError(
                f"{where} = {value!r} exceeds this service's limit of {limit}",
                code="limit_exceeded",
            )


_KIND_NAMES: dict[Kind, str] = {
    bool: "a logical (.true. or .false.)",
    int: "an integer",
    float: "a number",
    str: "a quoted string",
}


def fortran_string(value: str) -> str:
    """A Fortran character literal: single quotes, inner single quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


class FortranString(str):
    """A ``str`` whose ``repr`` is its Fortran literal: ASE's writer formats values with
    ``repr``, so wrapping strings makes it write correct Fortran quoting."""

    __slots__ = ()

    def __repr__(self) -> str:
        return fortran_string(str(self))


def engine_namelists(
    input_data: Mapping[str, Mapping[str, Any]], limits: InputLimits
) -> dict[str, dict[str, Any]]:
    """The user's part of a task's namelists, re-checked on the worker, strings wrapped.

    Only ``passed`` keys come out (the engine adds its own); any unknown key or unsafe
    value in the stored spec raises :class:`InputError` (the spec was not planned here).
    """
    checked = check_namelists(input_data, limits)
    return {
        sec: {k: FortranString(v) if isinstance(v, str) else v for k, v in values.items()}
        for sec, values in checked.items()
    }


def check_pseudo_name(label: str, name: str) -> None:
    """A pseudopotential is named by a plain file name in the service's pseudo_dir."""
    if not SAFE_FILE_NAME.match(name):
        raise InputError(
            f"pseudopotential {name!r} of species {label!r} must be a plain file name "
            "(letters, digits and _.+-, not starting with '.'; no paths)",
            code="bad_card",
        )


def recheck_task_spec(spec: TaskSpec, limits: InputLimits) -> None:
    """The worker's own check of a spec before any input is written (``InputError``).

    The control plane planned it, but its stored record is not trusted: sizes,
    pseudopotential names and every namelist key and value are checked again.
    """
    natoms = len(spec.symbols)
    if natoms > limits.max_atoms or len(spec.positions) != natoms:
        raise InputError(
            f"the task has {natoms} atoms ({len(spec.positions)} positions); "
            f"at most {limits.max_atoms} are accepted",
            code="too_many_atoms",
        )
    if spec.qe is None:
        return
    for label, name in spec.qe.pseudopotentials.items():
        check_pseudo_name(label, name)
    check_namelists(spec.qe.input_data, limits)
    if spec.qe.kpts is not None:
        if len(spec.qe.kpts) != 3 or any(n < 1 for n in spec.qe.kpts):
            raise InputError(f"bad k-point grid {spec.qe.kpts}", code="bad_card")
        if math.prod(spec.qe.kpts) > limits.max_kpoints:
            raise InputError(
                f"k-point grid {spec.qe.kpts} exceeds the limit of {limits.max_kpoints}",
                code="limit_exceeded",
            )
    if len(spec.qe.koffset) != 3 or any(s not in (0, 1) for s in spec.qe.koffset):
        raise InputError(f"bad k-point shift {spec.qe.koffset}", code="bad_card")


def refused_spec(exc: InputError) -> EngineError:
    """A spec the worker's own checks refuse: a permanent failure naming the problem."""
    return EngineError(
        f"the task spec is refused by the worker: {exc.message}",
        retryable=False,
        code="task_spec_refused",
    )
