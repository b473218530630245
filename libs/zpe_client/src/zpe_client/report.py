"""How results and progress read as text: ``zpe result``, ``zpe submit --wait``,
``Job.wait(progress=True)`` and the thermochemistry block of ``summary.txt``."""

from __future__ import annotations

from typing import Any, TextIO

from zpe_client.models import JobStatus


def thermo_lines(thermo: dict[str, Any]) -> list[str]:
    """The thermochemistry block of ``summary.txt`` and of ``zpe result``."""
    gas = thermo["model"] == "ideal_gas"
    t = f"({thermo['temperature']:g} K)"
    lines = [
        "thermochemistry   : "
        + (
            f"ideal gas (ASE IdealGasThermo), {thermo['geometry']}, point group "
            f"{thermo['point_group']}, symmetry number {thermo['symmetry_number']} "
            f"({thermo['symmetry_number_source']}), p = {thermo['pressure']:g} Pa"
            if gas
            else "harmonic (ASE HarmonicThermo)"
        ),
        f"E_elec            : {thermo['potential_energy_ev']:.6f} eV",
        f"E_elec + ZPE      : {thermo['potential_energy_plus_zpe_ev']:.6f} eV",
    ]
    if gas:
        lines += [
            f"{'H' + t:<18}: {thermo['enthalpy_ev']:.6f} eV",
            f"{'S' + t:<18}: {thermo['entropy_ev_per_k']:.8f} eV/K",
            f"{'G' + t:<18}: {thermo['gibbs_energy_ev']:.6f} eV",
        ]
    else:
        lines += [
            f"{'U' + t:<18}: {thermo['internal_energy_ev']:.6f} eV",
            f"{'S' + t:<18}: {thermo['entropy_ev_per_k']:.8f} eV/K",
            f"{'F' + t:<18}: {thermo['helmholtz_energy_ev']:.6f} eV",
        ]
    return lines


def result_lines(result: dict[str, Any]) -> list[str]:
    """A finished job's result document as ``zpe result`` prints it."""
    lines = [
        f"ZPE = {result['zpe_ev']:.4f} eV ({result['zpe_kjmol']:.2f} kJ/mol)",
        f"S_vib({result['temperature']:g} K) = {result['s_vib_jmol_k']:.3f} J/mol/K",
    ]
    freqs = []
    imaginary = 0
    for mode in result["modes"]:
        if mode.get("excluded"):  # translations/rotations of a free molecule
            continue
        if mode["imaginary"]:
            imaginary += 1
            freqs.append(f"{abs(mode['frequency_cm']):.1f}i")
        elif mode["counted"]:
            freqs.append(f"{mode['frequency_cm']:.1f}")
    lines.append("frequencies (cm^-1, counted and imaginary): " + ", ".join(freqs))
    if result.get("excluded_modes"):
        lines.append(f"({result['mode_selection']})")
    if result.get("frequency_set_note"):
        lines.append(f"frequency set: {result['frequency_set']} ({result['frequency_set_note']})")
    if result.get("thermochemistry"):
        lines += thermo_lines(result["thermochemistry"])
    if imaginary:
        lines.append(f"warning: {imaginary} imaginary mode(s), not in the ZPE")
    lines += [f"warning: {warning}" for warning in result.get("warnings") or []]
    return lines


def scf_count(preview: dict[str, Any]) -> str:
    """``10 SCFs with symmetry (Pmm2 (25)), 19 without``, from a parse preview."""
    full, reduced = preview["tasks"], preview["tasks_symmetric"]
    group = f" ({preview['spacegroup']})" if preview.get("spacegroup") else ""
    if reduced == full:
        return f"{full} SCFs (symmetry saves none{group})"
    return f"{reduced} SCFs with symmetry{group}, {full} without"


def draw_progress(status: JobStatus, out: TextIO, *, width: int = 30) -> None:
    """One progress line, redrawn in place (``\\r``)."""
    progress = status.progress
    filled = int(width * progress.fraction)
    bar = "#" * filled + "-" * (width - filled)
    elapsed = status.elapsed_seconds or 0.0
    out.write(
        f"\r[{bar}] {progress.done}/{progress.total} tasks  "
        f"{status.state.value:<9} {elapsed:7.1f} s"
    )
    out.flush()
