"""A store outage in the middle of a submission must not strand the job or its key.

Found by the chaos suite's store-down window (``bench/chaos.py``): the client gets a
503 and retries with the same ``Idempotency-Key``; that retry (or, for a client that
never comes back, the periodic reconcile) must finish what the first request started.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from zpe_client.models import JobRequest, JobState, TaskState
from zpe_core.errors import StoreUnavailable
from zpe_core.jobs.runner import run_task
from zpe_core.jobs.service import JobService
from zpe_core.settings import Settings
from zpe_core.store.memory import MemoryJobStore

H2 = (Path(__file__).resolve().parents[3] / "samples" / "h2_zpe.in").read_text()


class FlakyStore(MemoryJobStore):
    """Fails from the n-th create of a key matching ``prefix`` until ``up()``."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: Callable[[str], bool] = lambda key: False
        self.down = False

    def break_after(self, prefix: str, n: int) -> None:
        seen = [0]

        def fail(key: str) -> bool:
            if key.startswith(prefix):
                seen[0] += 1
                if seen[0] > n:
                    self.down = True
            return self.down

        self.fail = fail

    def up(self) -> None:
        self.fail, self.down = (lambda key: False), False

    def _check(self, key: str) -> None:
        if self.fail(key):
            raise StoreUnavailable("store down (test)")

    def _create(self, key: str, value: bytes) -> int:
        self._check(key)
        return super()._create(key, value)

    def _swap(self, key: str, value: bytes, expected_rev: int) -> int:
        self._check(key)
        return super()._swap(key, value, expected_rev)

    def _delete(self, key: str) -> None:
        self._check(key)
        super()._delete(key)


def service(store: FlakyStore) -> JobService:
    settings = Settings(store_url="memory://", default_engine="mock", allowed_engines="mock")
    return JobService(store, None, settings)


def finish(svc: JobService, job_id: str) -> JobState:
    """Run the job's queued tasks as a pull worker finds them: through ready markers."""
    job = svc.store.get_job(job_id)
    assert job is not None
    while (task := svc.store.claim_next("w", 60.0)) is not None:
        svc.store.release_task(task.task_id, task.epoch)
        run_task(svc, task.task_id, "w")
    for task_id in {ref.task_id for ref in job.value.tasks}:
        found = svc.store.get_task(task_id)
        assert found is not None and found.value.state is TaskState.DONE, task_id
    done = svc.store.get_job(job_id)
    assert done is not None
    return done.value.state


@pytest.mark.parametrize("prefix, n", [("jobs/", 0), ("tasks/", 3), ("queue/", 5)])
def test_retry_with_the_same_key_completes_a_submission_cut_by_an_outage(
    prefix: str, n: int
) -> None:
    store = FlakyStore()
    svc = service(store)
    request = JobRequest(input_text=H2, engine="mock", delta=0.011, symmetry="off")
    store.break_after(prefix, n)
    with pytest.raises(StoreUnavailable):
        svc.submit(request, owner="u", idempotency_key="k-1")
    store.up()
    job, _ = svc.submit(request, owner="u", idempotency_key="k-1")
    assert len(store.all_job_ids()) == 1  # never two jobs for one key
    assert len(store.all_task_ids()) == job.total_tasks == 13
    assert finish(svc, job.job_id) is JobState.DONE


def test_reconcile_creates_tasks_a_cut_submission_never_created() -> None:
    """A client that never retries: the periodic reconcile repairs the job."""
    store = FlakyStore()
    svc = service(store)
    store.break_after("tasks/", 4)
    with pytest.raises(StoreUnavailable):
        svc.submit(JobRequest(input_text=H2, engine="mock", symmetry="off"), owner="u")
    store.up()
    (job_id,) = store.all_job_ids()
    assert len(store.all_task_ids()) < 13
    svc.reconcile(stale_after=0.0)
    assert len(store.all_task_ids()) == 13
    assert finish(svc, job_id) is JobState.DONE
