"""Poisoned shared tasks (docs/security.md): the first submitter of a point cannot change
what later jobs get for it.

Tasks are shared by key, and the stored spec is the first submitter's. Before the fix,
keys left out keys that still reached pw.x (``max_seconds``, ``title``, ...), so a job
with ``max_seconds = 1`` submitted first dead-lettered the point for everyone. Now those
keys never reach pw.x (``dropped`` in zpe_core.physics.namelists), the key covers every key that
does, and a stored spec that does not hash to its key is never inherited.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import require_or_skip
from tests.security.conftest import fake_pw, h2_input, namelist_text
from zpe_client.models import JobRequest, TaskState
from zpe_core.dispatch.base import JobDispatcher
from zpe_core.jobs.compute import compute_task
from zpe_core.jobs.models import Task
from zpe_core.jobs.runner import Outcome, run_task
from zpe_core.jobs.service import JobService
from zpe_core.physics.plan import task_key
from zpe_core.settings import Settings
from zpe_core.store import open_store

PSEUDO_DIR = "/usr/share/espresso/pseudo"
POISON = "  max_seconds = 0.001\n  title = 'poison'\n  verbosity = 'high'\n  iprint = 1\n"
POISON += "  wf_collect = .false.\n"


def _service(tmp_path: Path, **overrides: object) -> JobService:
    values: dict[str, object] = {
        "store_url": "memory://",
        "execution_mode": "http-pull",  # nothing runs by itself: the test runs the tasks
        "qe_version": "qe-test",
        "pseudo_dir": PSEUDO_DIR,
        "warm_start": False,
        "scratch_dir": str(tmp_path),
    }
    settings = Settings(**{**values, **overrides})  # type: ignore[arg-type]
    dispatcher: JobDispatcher | None = None
    return JobService(open_store(settings.store_url), dispatcher, settings)


def _pseudo_dir_exists() -> None:
    require_or_skip(Path(PSEUDO_DIR, "H.pbe-kjpaw.UPF").is_file(), "H.pbe-kjpaw.UPF")


def test_keys_that_never_reach_pwx_leave_no_trace_in_the_shared_spec(tmp_path: Path) -> None:
    _pseudo_dir_exists()
    service = _service(tmp_path)
    poisoned, _ = service.submit(
        JobRequest(input_text=h2_input(control=POISON), engine="qe"), owner="mallory"
    )
    victim, _ = service.submit(JobRequest(input_text=h2_input(), engine="qe"), owner="alice")
    assert [t.task_id for t in poisoned.tasks] == [t.task_id for t in victim.tasks]
    _, plan = service.plan(JobRequest(input_text=h2_input(), engine="qe"))
    stored_ids = {ref.task_id for ref in victim.tasks}
    computed = [planned for planned in plan.tasks if planned.task_id in stored_ids]
    assert computed and computed[0].task_id == victim.tasks[0].task_id
    for planned in computed:  # symmetry-derived points have no task of their own
        found = service.store.get_task(planned.task_id)
        assert found is not None
        stored = found.value.spec
        assert stored.qe is not None and planned.spec.qe is not None
        # What the victim inherits is exactly what it planned itself.
        assert stored.qe.input_data == planned.spec.qe.input_data
        assert stored.model_dump(exclude={"reference_key"}) == planned.spec.model_dump(
            exclude={"reference_key"}
        )
    # And what the engine writes for that spec holds none of the poison.
    from zpe_core.engines.qe import QeEngine

    reference = plan.tasks[0].spec
    work = tmp_path / "work"
    engine = QeEngine(fake_pw(tmp_path / "bin", "exit 3"), PSEUDO_DIR, 10.0, version="qe-test")
    with pytest.raises(Exception):  # noqa: B017 - the fake pw.x fails after the input is written
        engine.compute(reference, work)
    written = namelist_text((work / "espresso.pwi").read_text()).lower()
    for key in ("max_seconds", "title", "verbosity", "iprint", "wf_collect"):
        assert key not in written, key


def test_a_stored_spec_that_does_not_match_its_key_is_not_inherited(tmp_path: Path) -> None:
    _pseudo_dir_exists()
    service = _service(tmp_path)
    first, _ = service.submit(JobRequest(input_text=h2_input(), engine="qe"), owner="mallory")
    reference_id = first.tasks[0].task_id

    def tamper(task: Task) -> Task:
        assert task.spec.qe is not None
        task.spec.qe.input_data["electrons"]["conv_thr"] = 1.0  # garbage forces for everyone
        task.state = TaskState.DONE
        return task

    service.store.mutate_task(reference_id, tamper)
    assert task_key(service.store.get_task(reference_id).value.spec) != reference_id  # type: ignore[union-attr]
    second, _ = service.submit(JobRequest(input_text=h2_input(), engine="qe"), owner="alice")
    assert reference_id not in second.reused_task_ids, "a foreign spec's result was reused"
    stored = service.store.get_task(reference_id)
    assert stored is not None
    assert task_key(stored.value.spec) == reference_id
    assert stored.value.state is TaskState.QUEUED
    assert stored.value.result is None
    assert second.job_id in stored.value.subscribers


@pytest.mark.pwx
def test_max_seconds_submitted_first_cannot_dead_letter_a_later_job(tmp_path: Path) -> None:
    require_or_skip(shutil.which("pw.x") is not None, "pw.x")
    _pseudo_dir_exists()
    from zpe_core.engines.qe import QeEngine

    version = QeEngine("pw.x", PSEUDO_DIR, 60.0).version()
    service = _service(tmp_path, qe_version=version, retry_max=1, task_timeout_seconds=300.0)
    service.submit(JobRequest(input_text=h2_input(control=POISON), engine="qe"), owner="mallory")
    victim, _ = service.submit(JobRequest(input_text=h2_input(), engine="qe"), owner="alice")
    reference_id = victim.tasks[0].task_id
    outcome = run_task(service, reference_id, "worker-1", ignore_ready_at=True)
    assert outcome is Outcome.COMMITTED
    task = service.store.get_task(reference_id)
    assert task is not None and task.value.state is TaskState.DONE
    assert not task.value.dead_letter
    # The same spec through the store-free path agrees (a pull worker's view).
    result = compute_task(task.value.spec, service.settings, task_id=reference_id)
    assert result.energy_ev == pytest.approx(task.value.result.energy_ev, abs=1e-6)  # type: ignore[union-attr]
