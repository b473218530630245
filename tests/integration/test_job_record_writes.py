"""A job's record is written O(1) times, whatever the job's size.

A 385-task mock job (64 mobile atoms) run by several worker threads through
``run_task`` on each backend (memory, file, a real redis-server, fake-gcs-server)
writes no store key more than a handful of times (``WriteCountingStore`` counts the
writes per key); and the same job through a proxy that enforces Cloud Storage's
one-write-per-second-per-object rule (429) finishes with 32 workers and no error.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.fixtures.gcs_rate_limit import RateLimitedGcs
from tests.fixtures.servers import GcsServer, RedisServer
from tests.fixtures.store_writes import WriteCountingStore, run_job_in_threads
from zpe_client.models import JobState
from zpe_core.store import JobStore, open_store

pytestmark = pytest.mark.slow

TASKS = 385
MAX_WRITES_PER_KEY = 5


def _open(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    unique = f"w{uuid.uuid4().hex[:12]}"
    if backend == "memory":
        return open_store("memory://")
    if backend == "file":
        return open_store(f"file://{tmp_path}/store")
    if backend == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        return open_store(f"{redis.url}?namespace={unique}")
    gcs: GcsServer = request.getfixturevalue("gcs_server")
    return open_store(f"gs://{gcs.bucket}/{unique}")


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("backend", ["memory", "file", "redis", "gcs"])
def test_no_key_is_written_more_than_a_handful_of_times(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = WriteCountingStore(_open(backend, request, tmp_path))
    try:
        run = run_job_in_threads(store, threads=8)
    finally:
        store.close()
    job_key = f"jobs/{run.job.job_id}"
    busiest, most = store.busiest()
    print(
        f"{backend}: job record written {store.writes[job_key]} times "
        f"({store.attempts[job_key]} attempts); busiest key {busiest} ({most}); "
        f"busiest task record {store.busiest('tasks/')[1]}; {run.seconds:.1f} s"
    )
    assert run.job.total_tasks == TASKS
    assert run.errors == [] and run.outcomes == {"committed": TASKS}
    assert run.job.state is JobState.DONE, run.job.error
    assert store.writes[job_key] <= MAX_WRITES_PER_KEY
    assert most <= MAX_WRITES_PER_KEY, f"{busiest} was written {most} times"


@pytest.mark.timeout(1200)
def test_a_385_task_job_finishes_under_the_gcs_object_write_rate(
    rate_limited_gcs: RateLimitedGcs, gcs_server: GcsServer
) -> None:
    store = rate_limited_gcs.store(gcs_server.bucket, f"rate{uuid.uuid4().hex[:10]}")
    try:
        run = run_job_in_threads(store, threads=32, timeout=900.0)
    finally:
        store.close()
    job_name = f"{store._records}jobs/{run.job.job_id}"
    print(
        f"gcs behind the 1 write/s proxy: {run.seconds:.1f} s, "
        f"{sum(rate_limited_gcs.refused.values())} writes answered 429, job record written "
        f"{rate_limited_gcs.forwarded_writes[job_name]} times; outcomes {dict(run.outcomes)}"
    )
    assert sum(rate_limited_gcs.refused.values()) > 0, "the proxy never enforced the limit"
    assert run.errors == [], run.errors[:5]
    assert run.outcomes == {"committed": TASKS}
    assert run.job.state is JobState.DONE, run.job.error
    assert rate_limited_gcs.forwarded_writes[job_name] <= MAX_WRITES_PER_KEY


@pytest.mark.timeout(120)
def test_one_finisher_is_elected_when_the_election_write_was_answered_429(
    rate_limited_gcs: RateLimitedGcs, gcs_server: GcsServer
) -> None:
    """The second caller's create is refused 429 (the first wrote the marker < 1 s ago),
    retried, then refused 412: it must lose, not mistake the winner's marker for its
    own retried write (which made several finishers write the same artifacts, 429s
    past the retry budget, in the 385-task test above)."""
    store = rate_limited_gcs.store(gcs_server.bucket, f"elect{uuid.uuid4().hex[:10]}")
    try:
        won = [store.claim_finalizer("j1", 385), store.claim_finalizer("j1", 385)]
    finally:
        store.close()
    assert sum(rate_limited_gcs.refused.values()) > 0, "the second create was not answered 429"
    assert won == [True, False]
