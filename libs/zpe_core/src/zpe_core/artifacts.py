"""The result of a finished job: JSON document, ``summary.txt`` and ``freqs.csv``."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from zpe_core.analysis import VibrationResult
from zpe_core.models import Job

EV_TO_KJMOL = 96.48533212331002
ARTIFACT_NAMES = {"result": "result.json", "summary": "summary.txt", "freqs": "freqs.csv"}
ARTIFACT_MEDIA_TYPES = {
    "result": "application/json",
    "summary": "text/plain; charset=utf-8",
    "freqs": "text/csv; charset=utf-8",
}


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def build_result(
    job: Job, vib: VibrationResult, *, finished_at: float, engine_version: str
) -> dict[str, Any]:
    """The result document (a superset of the seed system's fields)."""
    started = job.started_at or job.created_at
    s = job.structure
    rigid = vib.excluded_modes()
    return {
        "job_id": job.job_id,
        "freqs_cm": [float(m.frequency_cm) for m in vib.modes],
        "modes": [
            {
                "index": int(m.index),
                "frequency_cm": float(m.frequency_cm),
                "imaginary": bool(m.imaginary),
                "counted": bool(m.counted),
                "excluded": m.index in rigid,  # a translation/rotation of a free molecule
                "energy_ev": float(m.energy_ev),
            }
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


def render_summary(result: dict[str, Any]) -> str:
    """A human-readable summary."""
    lines = [
        f"ZPE job {result['job_id']}",
        f"engine            : {result['engine']} ({result['engine_version']})",
        f"mobile atoms      : {result['mobile_indices']}",
        f"fixed atoms       : {result['fixed_indices']}",
        f"k-points          : {result['kpts'] or 'gamma'} shift {result['koffset']}",
        f"delta / nfree     : {result['delta']} A / {result['nfree']}",
        f"ecutwfc / ecutrho : {result['ecutwfc']} / {result['ecutrho']} Ry",
        f"mode selection    : {result['mode_selection']}",
        "",
        f"{'mode':>4}  {'freq (cm^-1)':>14}  {'energy (meV)':>12}  note",
    ]
    for mode in result["modes"]:
        if mode.get("excluded"):
            note = "excluded (translation/rotation)"
        else:
            note = "imaginary" if mode["imaginary"] else ("" if mode["counted"] else "excluded")
        freq = f"{abs(mode['frequency_cm']):.2f}" + ("i" if mode["imaginary"] else " ")
        lines.append(
            f"{mode['index']:>4}  {freq:>14}  {mode['energy_ev'] * 1000:>12.3f}  {note}".rstrip()
        )
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
    return "\n".join(lines) + "\n"


def _symmetry_line(sym: dict[str, Any] | None) -> str:
    if not sym:
        return "symmetry          : -"
    line = f"symmetry          : {sym['points_computed']} of {sym['points_full']} points computed"
    if sym.get("spacegroup"):
        line += f", {sym['spacegroup']}, {sym['operations']} operation(s) used"
    return line + (f" ({sym['reason']})" if sym.get("reason") else "")


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
