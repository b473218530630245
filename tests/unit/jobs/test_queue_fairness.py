"""A retried task is served before tasks that arrived after it was due (no starvation).

Found by the chaos suite (``bench/chaos.py``): new tasks were created with
``ready_at = 0``, so their ready markers sorted before every retried task's
(``ready_at = now + backoff``); under a steady stream of submissions a task whose
worker was killed waited until the whole backlog of newer work had drained (3 minutes
in a 200-job run), and its job with it.
"""

from __future__ import annotations

import time
from pathlib import Path

from zpe_client.models import ErrorInfo, ErrorSource, JobRequest
from zpe_core.jobs.models import RetryPolicy
from zpe_core.jobs.service import JobService
from zpe_core.settings import Settings
from zpe_core.store import open_store

H2 = (Path(__file__).resolve().parents[3] / "samples" / "h2_zpe.in").read_text()


def test_a_retried_task_is_leased_before_tasks_submitted_after_it_was_due() -> None:
    settings = Settings(store_url="memory://", default_engine="mock", allowed_engines="mock")
    service = JobService(open_store("memory://"), None, settings)
    store = service.store
    first, _ = service.submit(JobRequest(input_text=H2, mobile=[0], delta=0.011), owner="u")
    task = store.claim_next("w1", 60.0)
    assert task is not None and task.subscribers == [first.job_id]
    policy = RetryPolicy(retry_max=5, backoff_base_seconds=0.02, backoff_cap_seconds=0.02)
    error = ErrorInfo(code="lost", message="worker killed", source=ErrorSource.COMPUTE)
    store.fail_task(task.task_id, task.epoch, error, retryable=True, policy=policy)
    time.sleep(0.05)  # the retry is due
    later, _ = service.submit(JobRequest(input_text=H2, mobile=[1], delta=0.013), owner="u")
    order = []
    while (leased := store.claim_next("w2", 60.0)) is not None:
        order.append(leased.task_id)
    later_ids = {ref.task_id for ref in later.tasks} - {ref.task_id for ref in first.tasks}
    assert order.index(task.task_id) < min(order.index(t) for t in later_ids), order
