"""Progress on done markers: a crash at any point of a task's outcome is
repaired by ``reconcile``, and the job record keeps its O(1) writes."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from zpe_client.models import JobRequest, JobState, TaskState
from zpe_core.errors import StoreUnavailable
from zpe_core.jobs.runner import run_task
from zpe_core.jobs.service import JobService
from zpe_core.settings import Settings
from zpe_core.store.memory import MemoryJobStore

H2 = (Path(__file__).resolve().parents[3] / "samples" / "h2_zpe.in").read_text()


def _service() -> JobService:
    return JobService(MemoryJobStore(), None, Settings(default_engine="mock"))


def _submit(service: JobService) -> tuple[str, list[str]]:
    job, _ = service.submit(JobRequest(input_text=H2, symmetry="off"), owner="alice")
    return job.job_id, list(dict.fromkeys(ref.task_id for ref in job.tasks))


def test_crash_after_the_finalizer_election_is_finished_by_reconcile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = _service()
    job_id, tasks = _submit(service)
    calls: list[str] = []

    def crash(job_id: str) -> None:
        calls.append(job_id)
        raise SystemExit("the finisher died")  # not an Exception: nothing catches it

    # The finisher (the facade's finalizer where there is one) dies after its election.
    monkeypatch.setattr(getattr(service, "finalizer", service), "finalize", crash)
    for task_id in tasks[:-1]:
        run_task(service, task_id, "w1")
    with pytest.raises(SystemExit):
        run_task(service, tasks[-1], "w1")
    assert calls == [job_id]  # elected once
    monkeypatch.undo()
    job = service.store.get_job(job_id)
    assert job is not None and job.value.state is JobState.RUNNING
    assert not service.store.claim_finalizer(job_id, len(tasks))  # the election is over
    service.reconcile(stale_after=0.0)
    done = service.store.get_job(job_id)
    assert done is not None and done.value.state is JobState.DONE
    assert sorted(done.value.done_task_ids) == sorted(tasks)  # written with the end


def test_crash_between_commit_and_advancing_the_job_is_finished_by_reconcile() -> None:
    service = _service()
    job_id, tasks = _submit(service)
    for task_id in tasks[:-1]:
        run_task(service, task_id, "w1")
    last = service.store.claim_task(tasks[-1], "w2", 60.0)
    assert last is not None and last.lease is not None
    from zpe_core.engines import get_engine

    result = get_engine("mock", service.settings).compute(last.spec, Path("."))
    service.store.commit_result(tasks[-1], last.lease.epoch, result)  # then the worker died
    job = service.store.get_job(job_id)
    assert job is not None and job.value.state is JobState.RUNNING
    # The commit's own write marked it done for the job; nobody was elected to finish.
    assert len(service.done_task_ids(job.value)) == len(tasks)
    service.reconcile(stale_after=0.0)
    done = service.store.get_job(job_id)
    assert done is not None and done.value.state is JobState.DONE


def test_an_outage_between_the_commit_and_its_done_marker_is_counted_by_reconcile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the commit and its markers are separate writes (memory, file, GCS), the store
    may go away between them: the task is done, the job does not know it yet."""
    service = _service()
    job_id, tasks = _submit(service)
    for task_id in tasks[:-1]:
        run_task(service, task_id, "w1")
    store = service.store
    create = store._create

    def outage_on_marker(key: str, value: bytes) -> int:
        if key.startswith("done/"):
            raise StoreUnavailable("the store went away after the commit")
        return create(key, value)

    monkeypatch.setattr(store, "_create", outage_on_marker)
    with pytest.raises(StoreUnavailable):
        run_task(service, tasks[-1], "w2")
    monkeypatch.undo()
    task = store.get_task(tasks[-1])
    assert task is not None and task.value.state is TaskState.DONE
    job = store.get_job(job_id)
    assert job is not None and job.value.state is JobState.RUNNING
    assert len(service.done_task_ids(job.value)) == len(tasks) - 1
    service.reconcile(stale_after=0.0)
    done = store.get_job(job_id)
    assert done is not None and done.value.state is JobState.DONE
    assert sorted(done.value.done_task_ids) == sorted(tasks)


def test_the_job_record_is_written_a_bounded_number_of_times() -> None:
    service = _service()
    job_id, tasks = _submit(service)
    revisions = {service.store.get_job(job_id).rev}  # type: ignore[union-attr]
    for task_id in tasks:
        run_task(service, task_id, "w1")
        revisions.add(service.store.get_job(job_id).rev)  # type: ignore[union-attr]
    assert len(tasks) == 13
    # created, started, done: the 13 tasks' outcomes wrote no revision of their own.
    assert len(revisions) == 3
    job = service.store.get_job(job_id)
    assert job is not None and job.value.state is JobState.DONE


def test_a_resubmitted_job_lists_its_reused_tasks_once() -> None:
    service = _service()
    job_id, tasks = _submit(service)
    for task_id in tasks:
        run_task(service, task_id, "w1")
    again, _ = service.submit(JobRequest(input_text=H2, symmetry="off"), owner="alice")
    assert again.job_id != job_id
    assert again.state is JobState.DONE
    assert sorted(again.reused_task_ids) == sorted(tasks)
    assert sorted(service.done_task_ids(again)) == sorted(tasks)
    assert all(service.store.get_task(t).value.state is TaskState.DONE for t in tasks)  # type: ignore[union-attr]


def test_a_claim_cut_before_its_lease_marker_is_reaped_after_reconcile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The claim's write landed, its ``leases/`` marker did not (the store went away in
    between, as seen in the chaos suite): once the lease expires, reconcile lets the reaper
    find the task again instead of leaving it leased for ever."""
    service = _service()
    job_id, tasks = _submit(service)
    store = service.store
    create = store._create

    def outage_on_marker(key: str, value: bytes) -> int:
        if key.startswith("leases/"):
            raise StoreUnavailable("the store went away after the claim")
        return create(key, value)

    monkeypatch.setattr(store, "_create", outage_on_marker)
    with pytest.raises(StoreUnavailable):
        store.claim_task(tasks[0], "w-killed", 0.05)
    monkeypatch.undo()
    stuck = store.get_task(tasks[0])
    assert stuck is not None and stuck.value.state is TaskState.LEASED
    time.sleep(0.1)  # the lease expires
    assert service.reap() == 0  # no marker: the reaper cannot see it
    service.reconcile(stale_after=0.0)
    service.reap()
    requeued = store.get_task(tasks[0])
    assert requeued is not None and requeued.value.state is TaskState.QUEUED
    assert requeued.value.attempts == 1  # the lost lease counted, as an expiry does
    job = store.get_job(job_id)
    assert job is not None and not job.value.state.terminal  # and the job goes on


def test_a_requeue_cut_before_its_ready_marker_is_restored_by_the_next_reconcile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An expiry re-queued the task, then the store went away before its ready marker:
    the next periodic reconcile (long before ``redispatch_after_seconds``) puts the
    marker back, so a pull worker can lease the task again."""
    service = _service()
    _, tasks = _submit(service)
    store = service.store
    leased = store.claim_task(tasks[0], "w-killed", 0.05)
    assert leased is not None
    time.sleep(0.1)  # the worker died; its lease expires
    create = store._create

    def outage_on_ready_marker(key: str, value: bytes) -> int:
        if key.startswith("queue/"):
            raise StoreUnavailable("the store went away after the re-queue")
        return create(key, value)

    monkeypatch.setattr(store, "_create", outage_on_ready_marker)
    with pytest.raises(StoreUnavailable):
        store.expire_leases(service.settings.retry_policy)
    monkeypatch.undo()
    task = store.get_task(tasks[0])
    assert task is not None and task.value.state is TaskState.QUEUED
    time.sleep(max(0.0, task.value.ready_at - time.time()) + 0.01)  # its backoff
    # Every other task is claimed (and so out of the way); the re-queued one has no marker.
    others = [store.claim_next("w2", 60.0) for _ in tasks[1:]]
    assert all(t is not None and t.task_id != tasks[0] for t in others)
    assert store.claim_next("w2", 60.0) is None
    service.reconcile(stale_after=service.settings.redispatch_after_seconds)
    again = store.claim_next("w2", 60.0)
    assert again is not None and again.task_id == tasks[0]


def test_reconcile_visits_active_jobs_and_recover_rebuilds_the_index() -> None:
    service = _service()
    store = service.store
    finished, finished_tasks = _submit(service)
    for task_id in finished_tasks:
        run_task(service, task_id, "w1")
    running, _ = _submit(service)  # same tasks: already done, so this one is done too
    job, _ = service.submit(JobRequest(input_text=H2, symmetry="off", delta=0.02), owner="alice")
    assert set(store.active_job_ids()) >= {finished, job.job_id}
    service.reconcile(stale_after=0.0)
    assert store.active_job_ids() == [job.job_id]  # ended jobs leave the index
    store.forget_active_job(job.job_id)  # a store written before the index existed
    service.reconcile(stale_after=0.0)
    assert store.active_job_ids() == []
    service.recover()  # looks at every job, so the live one is indexed again
    assert store.active_job_ids() == [job.job_id]
    assert running != job.job_id


def test_the_control_plane_reconciles_every_reconcile_interval(tmp_path: Path) -> None:
    """A result committed just before its worker died waits for the reconcile; that wait
    is ``ZPE_RECONCILE_INTERVAL_SECONDS``, not ``redispatch_after_seconds`` (15 min)."""
    from zpe_core.bootstrap import ControlPlane
    from zpe_core.engines import get_engine
    from zpe_core.settings import ApiSettings

    settings = ApiSettings(
        store_url=f"file://{tmp_path}",
        execution_mode="http-pull",
        default_engine="mock",
        reconcile_interval_seconds=0.3,
        reaper_interval_seconds=0.05,
    )
    assert settings.redispatch_after_seconds >= 900
    plane = ControlPlane.open(settings)
    service = plane.service
    job_id, tasks = _submit(service)
    for task_id in tasks[:-1]:
        run_task(service, task_id, "w1")
    last = service.store.claim_task(tasks[-1], "w2", 60.0)
    assert last is not None and last.lease is not None
    result = get_engine("mock", settings).compute(last.spec, tmp_path)
    service.store.commit_result(tasks[-1], last.lease.epoch, result)  # then the worker died
    plane.start(recover=False)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            job = service.store.get_job(job_id)
            if job is not None and job.value.state is JobState.DONE:
                break
            time.sleep(0.05)
    finally:
        plane.stop()
    job = service.store.get_job(job_id)
    assert job is not None and job.value.state is JobState.DONE


def test_a_store_outage_while_finishing_leaves_the_job_to_reconcile_not_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The elected finisher reads the tasks' forces while the store is away: the job must
    not fail for good over a blip; the next reconcile finishes it."""
    service = _service()
    job_id, tasks = _submit(service)
    store = service.store
    for task_id in tasks[:-1]:
        run_task(service, task_id, "w1")
    get_task = store.get_task
    finishing = {"on": False}

    def away_while_finishing(task_id: str):  # type: ignore[no-untyped-def]
        if finishing["on"]:
            raise StoreUnavailable("the store went away while the job was finishing")
        return get_task(task_id)

    finalize = service.finalizer.finalize

    def finalize_during_outage(job_id: str) -> None:
        finishing["on"] = True
        try:
            finalize(job_id)
        finally:
            finishing["on"] = False

    monkeypatch.setattr(store, "get_task", away_while_finishing)
    monkeypatch.setattr(service.finalizer, "finalize", finalize_during_outage)
    with contextlib.suppress(StoreUnavailable):
        run_task(service, tasks[-1], "w1")
    monkeypatch.undo()
    job = store.get_job(job_id)
    assert job is not None and job.value.state is JobState.RUNNING, job.value.error
    service.reconcile(stale_after=0.0)
    done = store.get_job(job_id)
    assert done is not None and done.value.state is JobState.DONE
