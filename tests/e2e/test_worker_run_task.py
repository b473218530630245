"""``zpe-worker run-task`` runs a task of a job the API created, with the same code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from zpe_client.models import JobRequest, JobState
from zpe_core.jobs.service import JobService
from zpe_core.settings import Settings
from zpe_core.store import open_store

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def test_worker_processes_finish_a_job_queued_by_the_control_plane(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    settings = Settings(store_url=url, default_engine="mock", execution_mode="http-pull")
    service = JobService(open_store(url), None, settings)
    job, _ = service.submit(
        JobRequest(input_text=(SAMPLES / "co_zpe.in").read_text()), owner="alice"
    )
    env = {**os.environ, "ZPE_STORE_URL": url}
    outcomes = []
    for ref in job.tasks:
        out = subprocess.run(
            [sys.executable, "-m", "zpe_worker.cli", "run-task", ref.task_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        outcomes.append(out.stdout.strip())
    assert outcomes == ["committed"] * len(job.tasks)
    again = subprocess.run(
        [sys.executable, "-m", "zpe_worker.cli", "run-task", job.tasks[0].task_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.stdout.strip() == "skipped"  # a duplicate delivery runs nothing
    finished, _ = service.get_job(job.job_id)
    assert finished.state is JobState.DONE
    assert finished.summary is not None and finished.summary.zpe_ev > 0
