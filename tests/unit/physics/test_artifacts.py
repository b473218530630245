"""summary.txt and the CLI: rigid-body modes are not reported as imaginary warnings."""

from __future__ import annotations

from typing import Any

import pytest

from zpe_client.cli import _print_result
from zpe_core.physics.artifacts import render_summary


def _result() -> dict[str, Any]:
    def mode(index: int, freq: float, *, counted: bool, excluded: bool) -> dict[str, Any]:
        return {
            "index": index,
            "frequency_cm": freq,
            "imaginary": freq < 0,
            "counted": counted,
            "excluded": excluded,
            "energy_ev": 0.0,
        }

    return {
        "job_id": "j1",
        "engine": "mock",
        "engine_version": "mock-1",
        "mobile_indices": [0, 1, 2],
        "fixed_indices": [],
        "kpts": None,
        "koffset": [0, 0, 0],
        "delta": 0.01,
        "nfree": 2,
        "ecutwfc": 30.0,
        "ecutrho": 240.0,
        "mode_selection": "free molecule: the 6 lowest modes are excluded",
        "excluded_modes": 6,
        "modes": [mode(0, -35.0, counted=False, excluded=True)]
        + [mode(i, 5.0 * i, counted=False, excluded=True) for i in range(1, 6)]
        + [mode(6, -120.0, counted=False, excluded=False)]
        + [mode(7, 1600.0, counted=True, excluded=False)],
        "imaginary_freqs_cm": [-35.0, -120.0],
        "zpe_ev": 0.1,
        "zpe_kjmol": 9.6,
        "s_vib_jmol_k": 0.0,
        "temperature": 298.15,
        "tasks_total": 19,
        "tasks_reused": 0,
        "elapsed_seconds": 1.0,
    }


def test_summary_counts_only_real_imaginary_modes() -> None:
    text = render_summary(_result())
    assert "imaginary modes   : 1 (not counted in the ZPE)" in text
    assert text.count("excluded (translation/rotation)") == 6


def test_cli_lists_counted_and_real_imaginary_modes_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _print_result(_result())
    out = capsys.readouterr().out
    assert "frequencies (cm^-1, counted and imaginary): 120.0i, 1600.0" in out
    assert "warning: 1 imaginary mode(s), not in the ZPE" in out
    assert "35.0i" not in out
