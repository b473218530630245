"""The result of a finished job: JSON document, ``summary.txt``, ``freqs.csv``,
``thermo.csv``, ASE's ``VibrationsData`` JSON and an extended-XYZ animation of the modes."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
from ase import Atoms
from ase.io.extxyz import write_xyz
from ase.io.jsonio import encode as ase_json

from zpe_client.report import thermo_lines
from zpe_core.jobs.models import Job
from zpe_core.physics.analysis import (
    IMAGINARY_WARNING_CM,
    PARTIAL_FREE_MOLECULE,
    VibrationResult,
    partly_frozen_molecule,
    partly_frozen_note,
    rigid_body_overlaps,
)
from zpe_core.physics.thermochemistry import Thermochemistry, thermochemistry

EV_TO_KJMOL = 96.48533212331002
ARTIFACT_NAMES = {
    "result": "result.json",
    "summary": "summary.txt",
    "freqs": "freqs.csv",
    "thermo": "thermo.csv",
    "vibrations": "vibrations.json",
    "modes": "modes.xyz",
}
ARTIFACT_MEDIA_TYPES = {
    "result": "application/json",
    "summary": "text/plain; charset=utf-8",
    "freqs": "text/csv; charset=utf-8",
    "thermo": "text/csv; charset=utf-8",
    "vibrations": "application/json",
    "modes": "chemical/x-xyz",
}
MODE_FRAMES = 12
"""Frames per mode in ``modes.xyz`` (one period)."""
MODE_AMPLITUDE_A = 0.3
"""Largest atomic excursion in the animation, Å (a thermal amplitude diverges for 0 cm^-1)."""
RIGID_LIKE_SHARE = 0.8
"""A partly frozen molecule's mode is "mostly rigid-body" above this share of its mass-weighted
vector (a heuristic: stretches that move the mobile atoms' centre of mass share some too)."""


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def build_artifacts(
    job: Job,
    atoms: Atoms,
    vib: VibrationResult,
    *,
    potential_energy_ev: float,
    finished_at: float,
    engine_version: str,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The result document and every file of a finished job (store name -> bytes).

    ``atoms`` is the reference structure with the masses the Hessian used;
    ``potential_energy_ev`` the reference SCF's total energy.
    """
    thermo = thermochemistry(
        atoms,
        vib,
        potential_energy_ev=potential_energy_ev,
        temperature=job.request.temperature,
        pressure=job.request.pressure,
        symmetry_number=job.request.symmetry_number,
    )
    result = build_result(
        job, vib, finished_at=finished_at, engine_version=engine_version, thermo=thermo, atoms=atoms
    )
    files = {
        ARTIFACT_NAMES["result"]: json.dumps(result, indent=2).encode(),
        ARTIFACT_NAMES["summary"]: render_summary(result).encode(),
        ARTIFACT_NAMES["freqs"]: render_freqs_csv(result).encode(),
        ARTIFACT_NAMES["thermo"]: render_thermo_csv(thermo).encode(),
    }
    if vib.data is not None:
        files[ARTIFACT_NAMES["vibrations"]] = ase_json(vib.data).encode()
    if vib.vectors is not None:
        files[ARTIFACT_NAMES["modes"]] = render_modes_xyz(atoms, vib).encode()
    return result, files


def _warnings(
    vib: VibrationResult, thermo: Thermochemistry | None, partly_frozen: dict[str, Any] | None
) -> list[str]:
    out: list[str] = []
    bad = vib.imaginary_beyond(IMAGINARY_WARNING_CM)
    if bad:
        listed = ", ".join(f"{abs(m.frequency_cm):.1f}i" for m in bad)
        out.append(
            f"{len(bad)} vibrational mode{'s are' if len(bad) > 1 else ' is'} imaginary beyond "
            f"{IMAGINARY_WARNING_CM:g} cm^-1 ({listed} cm^-1): the structure is not a minimum, "
            "relax it first; imaginary modes are left out of the ZPE and the thermochemistry"
        )
    if partly_frozen is not None:
        out.append(partly_frozen["note"])
    if thermo is not None:
        out.extend(thermo.warnings)
    return out


def _partly_frozen(job: Job, vib: VibrationResult, atoms: Atoms | None) -> dict[str, Any] | None:
    s = job.structure
    if not partly_frozen_molecule(s.natoms, s.fixed_indices, s.mobile_indices):
        return None
    out: dict[str, Any] = {
        "code": PARTIAL_FREE_MOLECULE,
        "frozen_indices": sorted(set(range(s.natoms)) - set(s.mobile_indices)),
        "note": partly_frozen_note(s.natoms, s.mobile_indices),
    }
    if atoms is not None and vib.vectors is not None:
        shares = rigid_body_overlaps(vib.vectors, atoms, s.mobile_indices)
        rigid_like = [
            m for m, share in zip(vib.modes, shares, strict=True) if share > RIGID_LIKE_SHARE
        ]
        out["rigid_like_modes"] = [int(m.index) for m in rigid_like]
        out["rigid_like_shares"] = [round(shares[m.index], 4) for m in rigid_like]
        out["rigid_like_zpe_ev"] = 0.5 * sum(m.energy_ev for m in rigid_like if m.counted)
        if rigid_like:
            listed = ", ".join(f"{m.frequency_cm:.1f}" for m in rigid_like)
            out["note"] += (
                f"; here modes {out['rigid_like_modes']} ({listed} cm^-1) are mostly (over "
                f"{RIGID_LIKE_SHARE:.0%}) rigid translations/rotations of the mobile atoms and "
                f"add {out['rigid_like_zpe_ev']:.4f} eV to the ZPE"
            )
    return out


def build_result(
    job: Job,
    vib: VibrationResult,
    *,
    finished_at: float,
    engine_version: str,
    thermo: Thermochemistry | None = None,
    atoms: Atoms | None = None,
) -> dict[str, Any]:
    """The result document (a superset of the seed system's fields)."""
    started = job.started_at or job.created_at
    s = job.structure
    rigid = vib.excluded_modes()
    vectors = vib.vectors
    partly_frozen = _partly_frozen(job, vib, atoms)
    return {
        "job_id": job.job_id,
        # ASE's frequencies of the Hessian as computed, whichever set counts.
        "freqs_cm": [float(f) for f in vib.raw_frequencies_cm]
        or [float(m.frequency_cm) for m in vib.modes],
        "projected_freqs_cm": vib.projected_frequencies_cm,
        "frequency_set": vib.frequency_set,
        "frequency_set_note": _frequency_set_note(job, vib),
        "modes": [
            {
                "index": int(m.index),
                "frequency_cm": float(m.frequency_cm),
                "imaginary": bool(m.imaginary),
                "counted": bool(m.counted),
                "excluded": m.index in rigid,  # a translation/rotation of a free molecule
                "energy_ev": float(m.energy_ev),
            }
            | ({} if vectors is None else {"displacement": vectors[m.index].tolist()})
            for m in vib.modes
        ],
        "imaginary_freqs_cm": [float(m.frequency_cm) for m in vib.modes if m.imaginary],
        "counted_modes": [int(m.index) for m in vib.modes if m.counted],
        "excluded_modes": int(vib.excluded),
        "mode_selection": (
            f"free molecule: the {vib.excluded} lowest modes (translations and rotations"
            f"{', linear' if vib.linear else ''}) are excluded"
            if vib.free_molecule
            else "adsorbate/partial Hessian: every real mode is counted"
        ),
        "zpe_ev": float(vib.zpe_ev),
        "zpe_kjmol": float(vib.zpe_ev) * EV_TO_KJMOL,
        "s_vib_jmol_k": float(vib.s_vib_jmol_k),
        "temperature": float(vib.temperature),
        "mobile_indices": s.mobile_indices,
        "fixed_indices": s.fixed_indices,
        "symbols": s.symbols,
        "kpts": s.kpts,
        "koffset": s.koffset,
        "delta": job.request.delta,
        "nfree": job.request.nfree,
        "pseudo_dir": s.pseudo_dir,
        "ecutwfc": s.ecutwfc,
        "ecutrho": s.ecutrho,
        "engine": job.engine,
        "engine_version": engine_version,
        "tasks_total": job.total_tasks,
        "tasks_reused": len(job.reused_task_ids),
        "symmetry": symmetry_summary(job),
        "started_at": _iso(started),
        "finished_at": _iso(finished_at),
        "elapsed_seconds": max(0.0, finished_at - started),
        "thermochemistry": None if thermo is None else thermo.to_dict(),
        "partly_frozen": partly_frozen,
        "warnings": _warnings(vib, thermo, partly_frozen),
        # The reference geometry (Angstrom), so a page or notebook can draw the modes.
        "positions": None if atoms is None else atoms.positions.tolist(),
        "cell": None if atoms is None else atoms.cell.array.tolist(),
    }


def symmetry_summary(job: Job) -> dict[str, Any]:
    """``{spacegroup, operations, points_computed, points_full, reason}`` of a job."""
    sym = job.symmetry
    return {
        "spacegroup": sym.spacegroup if sym else None,
        "operations": len(sym.operations) if sym else 0,
        "points_computed": job.total_tasks,
        "points_full": sym.points_full if sym else job.total_tasks,
        "reason": sym.reason if sym else "a job from before symmetry-reduced plans",
    }


def _frequency_set_note(job: Job, vib: VibrationResult) -> str:
    if vib.frequency_set == "projected":
        return (
            "the ZPE and the thermochemistry use the frequencies after projecting rigid "
            "translations and rotations out of the mass-weighted Hessian (Eckart); "
            "freqs_cm are ASE's raw ones"
        )
    if vib.free_molecule:
        return (
            "the ZPE and the thermochemistry use ASE's raw frequencies; projected_freqs_cm "
            "are those after the Eckart projection (request frequency_set='projected' to use them)"
        )
    if job.request.frequency_set == "projected":
        return (
            "ASE's raw frequencies are used: the Eckart projection applies to free molecules "
            "only (every atom mobile, none fixed)"
        )
    return "ASE's raw frequencies are used"


def render_summary(result: dict[str, Any]) -> str:
    """A human-readable summary (older results without the issue-15 fields render too)."""
    projected = result.get("projected_freqs_cm")
    used_projected = result.get("frequency_set") == "projected"
    lines = [
        f"ZPE job {result['job_id']}",
        f"engine            : {result['engine']} ({result['engine_version']})",
        f"mobile atoms      : {result['mobile_indices']}",
        f"fixed atoms       : {result['fixed_indices']}",
        f"k-points          : {result['kpts'] or 'gamma'} shift {result['koffset']}",
        f"delta / nfree     : {result['delta']} A / {result['nfree']}",
        f"ecutwfc / ecutrho : {result['ecutwfc']} / {result['ecutrho']} Ry",
        f"mode selection    : {result['mode_selection']}",
    ]
    if result.get("frequency_set_note"):
        lines.append(
            f"frequency set     : {result['frequency_set']}: {result['frequency_set_note']}"
        )
    other = "raw (ASE)" if used_projected else "projected"
    header = f"{'mode':>4}  {'freq (cm^-1)':>14}  {'energy (meV)':>12}"
    if projected is not None:
        header += f"  {other + ' (cm^-1)':>17}"
    lines += ["", header + "  note"]
    others = result.get("freqs_cm") if used_projected else projected
    for mode in result["modes"]:
        if mode.get("excluded"):
            note = "excluded (translation/rotation)"
        else:
            note = "imaginary" if mode["imaginary"] else ("" if mode["counted"] else "excluded")
        line = (
            f"{mode['index']:>4}  {_wavenumber(mode['frequency_cm']):>14}  "
            f"{mode['energy_ev'] * 1000:>12.3f}"
        )
        if others is not None:
            line += f"  {_wavenumber(others[mode['index']]):>17}"
        lines.append(f"{line}  {note}".rstrip())
    # Rigid-body modes of a free molecule often come out slightly imaginary: not a warning.
    n_imag = sum(1 for m in result["modes"] if m["imaginary"] and not m.get("excluded"))
    lines += [
        "",
        f"ZPE               : {result['zpe_ev']:.6f} eV ({result['zpe_kjmol']:.3f} kJ/mol)",
        f"S_vib({result['temperature']:g} K) : {result['s_vib_jmol_k']:.4f} J/mol/K",
        f"imaginary modes   : {n_imag}" + (" (not counted in the ZPE)" if n_imag else ""),
        f"tasks             : {result['tasks_total']} ({result['tasks_reused']} reused)",
        _symmetry_line(result.get("symmetry")),
        f"elapsed           : {result['elapsed_seconds']:.1f} s",
    ]
    thermo = result.get("thermochemistry")
    if thermo:
        lines += ["", *thermo_lines(thermo)]
    warnings = result.get("warnings") or []
    if warnings:
        lines += ["", *(f"WARNING: {w}" for w in warnings)]
    return "\n".join(lines) + "\n"


def _symmetry_line(sym: dict[str, Any] | None) -> str:
    if not sym:
        return "symmetry          : -"
    line = f"symmetry          : {sym['points_computed']} of {sym['points_full']} points computed"
    if sym.get("spacegroup"):
        line += f", {sym['spacegroup']}, {sym['operations']} operation(s) used"
    return line + (f" ({sym['reason']})" if sym.get("reason") else "")


def _wavenumber(freq: float) -> str:
    return f"{abs(freq):.2f}" + ("i" if freq < 0 else " ")


def render_freqs_csv(result: dict[str, Any]) -> str:
    """One row per mode: index, frequency (imaginary as negative), flags, energy."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["mode", "frequency_cm", "imaginary", "counted", "energy_ev"])
    for mode in result["modes"]:
        writer.writerow(
            [
                mode["index"],
                f"{mode['frequency_cm']:.4f}",
                str(mode["imaginary"]).lower(),
                str(mode["counted"]).lower(),
                f"{mode['energy_ev']:.8f}",
            ]
        )
    return out.getvalue()


def render_thermo_csv(thermo: Thermochemistry) -> str:
    """``thermo.csv``: T, then H or U, S and G or F over the table's temperatures."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(thermo.csv_header())
    for row in thermo.table:
        writer.writerow(
            [
                f"{row.temperature:g}",
                f"{row.energy_ev:.10f}",
                f"{row.entropy_ev_per_k:.12e}",
                f"{row.free_energy_ev:.10f}",
            ]
        )
    return out.getvalue()


def render_modes_xyz(atoms: Atoms, vib: VibrationResult) -> str:
    """Every mode as an animation: ``MODE_FRAMES`` extended-XYZ frames per mode, one period,
    the largest atom moving ``MODE_AMPLITUDE_A``; each frame's comment names the mode."""
    if vib.vectors is None:
        raise ValueError("the result carries no mode vectors")
    mobile = np.asarray(vib.data.get_indices() if vib.data is not None else [], dtype=int)
    base = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    excluded = vib.excluded_modes()
    frames: list[Atoms] = []
    for mode in vib.modes:
        vector = np.zeros((len(atoms), 3))
        vector[mobile] = vib.vectors[mode.index]
        largest = float(np.max(np.linalg.norm(vector, axis=1)))
        if largest > 0.0:
            vector *= MODE_AMPLITUDE_A / largest
        for frame, phase in enumerate(np.linspace(0.0, 2 * np.pi, MODE_FRAMES, endpoint=False)):
            image = base.copy()
            image.positions += np.sin(phase) * vector
            image.info = {
                "mode": mode.index,
                "frequency_cm": round(float(mode.frequency_cm), 4),
                "imaginary": mode.imaginary,
                "counted": mode.counted,
                "excluded": mode.index in excluded,
                "frame": frame,
            }
            frames.append(image)
    buffer = io.StringIO()
    # The frames carry only symbols and positions and no calculator: naming those columns
    # and skipping results writes the same bytes as ``ase.io.write`` in half the time.
    write_xyz(buffer, frames, columns=["symbols", "positions"], write_results=False)
    return buffer.getvalue()
