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


@pytest.mark.parametrize("sample", ["h2o_zpe.in", "cu_slab_co.in"])
def test_modes_xyz_is_what_ase_writes_for_its_frames(sample: str) -> None:
    """``render_modes_xyz`` writes its frames through ASE's extxyz writer with fewer
    checks: the bytes are exactly those of ``ase.io.write`` on the same frames."""
    import io
    from pathlib import Path

    import ase.io

    from zpe_client.models import JobRequest, JobState
    from zpe_core.jobs.runner import run_task
    from zpe_core.jobs.service import JobService
    from zpe_core.settings import Settings
    from zpe_core.store.memory import MemoryJobStore

    text = (Path(__file__).resolve().parents[3] / "samples" / sample).read_text()
    service = JobService(MemoryJobStore(), None, Settings(default_engine="mock"))
    job, _ = service.submit(JobRequest(input_text=text, engine="mock"), owner="alice")
    for task_id in dict.fromkeys(ref.task_id for ref in job.tasks):
        run_task(service, task_id, "w1")
    found = service.store.get_job(job.job_id)
    assert found is not None and found.value.state is JobState.DONE
    written = service.store.get_artifact(job.job_id, "modes.xyz")
    assert written is not None
    frames = ase.io.read(io.StringIO(written.decode()), index=":", format="extxyz")
    assert len(frames) > 12 and frames[0].info["frame"] == 0
    again = io.StringIO()
    ase.io.write(again, frames, format="extxyz")
    assert again.getvalue() == written.decode()
