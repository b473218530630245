"""One contract suite for every ``JobStore`` backend: memory, file, redis, gcs.

Redis and GCS run on real local servers (``tests/fixtures/servers.py``).
Concurrency tests use separate processes (``spawn``), each reopening the store
from its URL; the memory store is per-process, so there they use threads.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from zpe_client.models import ErrorInfo, ErrorSource, JobRequest, TaskResult, TaskSpec, TaskState
from zpe_core.errors import AlreadyExists, ArtifactTooLarge, StoreConflict, StoreUnavailable
from zpe_core.jobs.models import Job, RetryPolicy, StructureInfo, Task
from zpe_core.store import JobStore, StaleLease, open_store
from zpe_core.store.base import queue_lane

BACKENDS = ["memory", "file", "redis", "gcs"]
FAST_RETRY = RetryPolicy(retry_max=2, backoff_base_seconds=0.0, backoff_cap_seconds=0.0)


# ---------------------------------------------------------------------- factories


def make_job(
    owner: str = "alice", *, job_id: str | None = None, created_at: float | None = None
) -> Job:
    """A minimal valid job (no tasks); ``structure.natoms`` doubles as a test counter."""
    return Job(
        job_id=job_id or uuid.uuid4().hex,
        owner=owner,
        request=JobRequest(input_text="&control /\n"),
        engine="mock",
        structure=StructureInfo(
            natoms=0,
            symbols=[],
            mobile_indices=[],
            fixed_indices=[],
            kpts=None,
            koffset=[0, 0, 0],
            ecutwfc=None,
            ecutrho=None,
            pseudo_dir=None,
            free_molecule=True,
        ),
        tasks=[],
        fingerprint="fp",
        created_at=created_at if created_at is not None else time.time(),
    )


def make_task(task_id: str | None = None) -> Task:
    """A minimal queued task, due immediately."""
    return Task(
        task_id=task_id or uuid.uuid4().hex,
        spec=TaskSpec(
            engine="mock",
            engine_version="1",
            symbols=["H"],
            positions=[[0.0, 0.0, 0.0]],
            cell=[[0.0] * 3 for _ in range(3)],
            pbc=[False, False, False],
        ),
        ready_at=0.0,
    )


def make_result() -> TaskResult:
    return TaskResult(
        energy_ev=-1.0, forces_ev_per_a=[[0.0, 0.0, 0.0]], engine="mock", engine_version="1"
    )


# ---------------------------------------------------------------------- backends


@dataclass
class Backend:
    """One backend under test: how to (re)open it and, for servers, the server."""

    name: str
    url: str
    store: JobStore
    server: Any = None

    def open(self) -> JobStore:
        """Another handle on the same data (the same object for memory)."""
        return self.store if self.name == "memory" else open_store(self.url)

    @property
    def processes(self) -> bool:
        return self.store.shared_across_processes

    @property
    def source(self) -> str | JobStore:
        """What a concurrent worker opens: the URL, or the shared object for memory://."""
        return self.url if self.processes else self.store


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    name: str = request.param
    unique = f"t{uuid.uuid4().hex[:12]}"
    server: Any = None
    if name == "memory":
        url = "memory://"
    elif name == "file":
        url = f"file://{tmp_path}/store"
    elif name == "redis":
        server = request.getfixturevalue("redis_server")
        url = f"{server.url}?namespace={unique}"
    else:
        server = request.getfixturevalue("gcs_server")
        url = f"gs://{server.bucket}/{unique}"
    store = open_store(url)
    yield Backend(name, url, store, server)
    store.close()


@pytest.fixture
def store(backend: Backend) -> JobStore:
    return backend.store


# ---------------------------------------------------------------------- concurrency helpers


def _reopen(source: str | JobStore) -> JobStore:
    return open_store(source) if isinstance(source, str) else source


def _increment_worker(source: str | JobStore, job_id: str, n: int, go: Any, out: Any) -> None:
    store = _reopen(source)
    store.ping()
    go.wait(120)  # a barrier: everyone starts together

    def bump(job: Job) -> Job:
        job.structure.natoms += 1
        return job

    for _ in range(n):
        store.mutate_job(job_id, bump)
    out.put(n)


def _claim_worker(source: str | JobStore, worker: str, go: Any, out: Any) -> None:
    store = _reopen(source)
    store.ping()
    go.wait(120)
    claimed: list[str] = []
    while (task := store.claim_next(worker, 60.0)) is not None:
        claimed.append(task.task_id)
    out.put(claimed)


def _run_parallel(
    backend: Backend,
    count: int,
    target: Callable[..., None],
    args: Callable[[int], tuple[Any, ...]],
) -> list[Any]:
    """Run ``target(*args(i), barrier, out)`` in ``count`` processes (memory: threads)."""
    results: list[Any] = []
    if not backend.processes:
        import queue

        go_t = threading.Barrier(count)
        out_t: queue.Queue[Any] = queue.Queue()
        threads = [
            threading.Thread(target=target, args=(*args(i), go_t, out_t)) for i in range(count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        while not out_t.empty():
            results.append(out_t.get())
        return results
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Barrier(count)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args(i), go, out)) for i in range(count)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + 150
    while len(results) < count and time.monotonic() < deadline:
        try:
            results.append(out.get(timeout=1))
        except Exception:
            if all(p.exitcode is not None for p in procs) and out.empty():
                break
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return results


# ---------------------------------------------------------------------- primitives


def test_create_is_create_only(store: JobStore) -> None:
    job = make_job()
    created = store.create_job(job)
    other = job.model_copy(update={"engine": "qe"})
    with pytest.raises(AlreadyExists):
        store.create_job(other)
    found = store.get_job(job.job_id)
    assert found is not None
    assert found.value.engine == "mock"
    assert found.rev == created.rev
    with pytest.raises(AlreadyExists):
        store._create(f"jobs/{job.job_id}", b"{}")


def test_compare_and_swap_rejects_stale_revision(store: JobStore) -> None:
    job = make_job()
    first = store.create_job(job)
    second = store.mutate_job(job.job_id, lambda j: j.model_copy(update={"engine": "qe"}))
    assert second.rev != first.rev
    with pytest.raises(StoreConflict):
        store._swap(f"jobs/{job.job_id}", b"{}", first.rev)
    found = store.get_job(job.job_id)
    assert found is not None and found.value.engine == "qe" and found.rev == second.rev
    with pytest.raises(StoreConflict):
        store._swap("jobs/absent", b"{}", first.rev)


def test_mutate_says_whether_it_wrote(store: JobStore) -> None:
    job = make_job()
    created = store.create_job(job)
    kept = store.mutate_job(job.job_id, lambda j: None)
    assert (kept.wrote, kept.rev, kept.value.engine) == (False, created.rev, "mock")
    changed = store.mutate_job(job.job_id, lambda j: j.model_copy(update={"engine": "qe"}))
    assert changed.wrote and changed.rev != created.rev and changed.value.engine == "qe"
    found = store.get_job(job.job_id)
    assert found is not None and found.rev == changed.rev


def test_revisions_never_repeat_after_delete(store: JobStore) -> None:
    seen = {store._create("misc/k", b"1")}
    for i in range(3):
        found = store._read("misc/k")
        assert found is not None
        seen.add(store._swap("misc/k", b"x%d" % i, found[1]))
    store._delete("misc/k")
    store._delete("misc/k")  # absent: no error
    assert store._read("misc/k") is None
    rev = store._create("misc/k", b"again")
    assert rev not in seen
    assert store._read("misc/k") == (b"again", rev)


def test_list_prefix_order_and_paging(store: JobStore) -> None:
    keys = [f"idx/a/{i:03d}" for i in range(25)]
    for key in reversed(keys):
        store._create(key, b"")
    store._create("idx/ab", b"")
    store._create("idx/b/000", b"")
    assert store._list("idx/a/") == keys
    assert store._list("idx/a/", limit=5) == keys[:5]
    assert store._list("idx/a/", start_after=keys[9], limit=3) == keys[10:13]
    assert store._list("idx/a/", start_after=keys[-1]) == []
    assert "idx/ab" not in store._list("idx/a/")
    for key in ("flat/b1", "flat/a2", "flat/a1", "flat/a10"):
        store._create(key, b"")
    assert store._list("flat/a") == ["flat/a1", "flat/a10", "flat/a2"]
    assert store._list("flat/a", start_after="flat/a1") == ["flat/a10", "flat/a2"]
    assert store._list("nothing/") == []


# ---------------------------------------------------------------------- concurrency


def test_concurrent_updates_lose_nothing(backend: Backend) -> None:
    workers, each = (4, 25) if backend.name == "gcs" else (8, 200)
    job = make_job()
    backend.store.create_job(job)
    done = _run_parallel(
        backend, workers, _increment_worker, lambda i: (backend.source, job.job_id, each)
    )
    assert sum(done) == workers * each
    found = backend.store.get_job(job.job_id)
    assert found is not None
    assert found.value.structure.natoms == workers * each


def test_claim_race_each_task_claimed_once(backend: Backend) -> None:
    workers, tasks = (4, 24) if backend.name == "gcs" else (6, 60)
    ids = [f"t{i:03d}{uuid.uuid4().hex[:8]}" for i in range(tasks)]
    for task_id in ids:
        backend.store.create_task(make_task(task_id))
    claimed_lists = _run_parallel(
        backend, workers, _claim_worker, lambda i: (backend.source, f"w{i}")
    )
    claimed = [task_id for chunk in claimed_lists for task_id in chunk]
    assert sorted(claimed) == sorted(ids)
    assert len(set(claimed)) == len(claimed)
    for task_id in ids:
        found = backend.store.get_task(task_id)
        assert found is not None and found.value.state is TaskState.LEASED
        assert found.value.epoch == 1
    assert backend.store.claim_next("late", 60.0) is None


def _finish_worker(
    source: str | JobStore, job_id: str, task_ids: list[str], total: int, go: Any, out: Any
) -> None:
    """Mark tasks done one by one, as committers do; count the finalizer elections won."""
    store = _reopen(source)
    store.ping()
    go.wait(120)
    won = 0
    for task_id in task_ids:
        store.mark_tasks_done(job_id, [task_id])
        if len(store.done_task_ids(job_id)) == total and store.claim_finalizer(job_id, total):
            won += 1
    out.put(won)


def test_done_markers_elect_exactly_one_finalizer(backend: Backend) -> None:
    workers, tasks = (4, 24) if backend.name == "gcs" else (6, 60)
    job_id = f"j{uuid.uuid4().hex}"
    ids = [f"t{i:03d}{uuid.uuid4().hex[:8]}" for i in range(tasks)]
    won = _run_parallel(
        backend,
        workers,
        _finish_worker,
        lambda i: (backend.source, job_id, ids[i::workers], tasks),
    )
    assert sum(won) == 1
    assert backend.store.done_task_ids(job_id) == sorted(ids)
    assert not backend.store.claim_finalizer(job_id, tasks)
    assert backend.store.claim_finalizer(job_id, tasks + 1)  # a grown job: a new election


def test_done_markers_are_create_only_and_remember_reuse(store: JobStore) -> None:
    job_id = f"j{uuid.uuid4().hex}"
    assert store.mark_tasks_done(job_id, ["a", "b", "a"]) == ["a", "b"]
    assert store.mark_tasks_done(job_id, ["a"]) == []
    assert store.mark_tasks_done(job_id, ["c"], reused=True) == ["c"]
    # A repeat (a submission finished after a crash) still names the reused task, not a
    # computed one.
    assert store.mark_tasks_done(job_id, ["c", "b"], reused=True) == ["c"]
    assert store.done_task_ids(job_id) == ["a", "b", "c"]
    assert store.done_task_ids(f"j{uuid.uuid4().hex}") == []
    assert store.done_task_ids("../jobs") == []


def test_done_marker_count_follows_the_markers(store: JobStore) -> None:
    job_id = f"j{uuid.uuid4().hex}"
    other = f"j{uuid.uuid4().hex}"
    assert store.count_done_tasks(job_id) == 0
    store.mark_tasks_done(job_id, ["a", "b"])
    store.mark_tasks_done(f"{job_id}x", ["c"])  # a job id that extends this one's
    store.mark_tasks_done(other, ["d"])
    assert store.count_done_tasks(job_id) == 2 == len(store.done_task_ids(job_id))
    store.mark_tasks_done(job_id, ["b", "e"])
    assert store.count_done_tasks(job_id) == 3
    assert store.count_done_tasks(other) == 1
    assert store.count_done_tasks("../jobs") == 0


def test_job_revision_is_that_of_the_record(store: JobStore) -> None:
    job = make_job()
    assert store.job_revision(job.job_id) is None
    created = store.create_job(job)
    assert store.job_revision(job.job_id) == created.rev
    changed = store.mutate_job(job.job_id, lambda j: j.model_copy(update={"engine": "qe"}))
    assert changed.rev != created.rev
    assert store.job_revision(job.job_id) == changed.rev
    assert store.job_revision("../jobs") is None


def test_create_many_is_create_only_per_key(store: JobStore) -> None:
    ns = f"c{uuid.uuid4().hex[:10]}"
    store._create(f"{ns}/b", b"old")
    revisions = store._create_many([(f"{ns}/a", b"1"), (f"{ns}/b", b"2"), (f"{ns}/c", b"3")])
    assert revisions[1] is None and revisions[0] is not None and revisions[2] is not None
    assert store._read(f"{ns}/a") == (b"1", revisions[0])
    assert store._read(f"{ns}/b") is not None and store._read(f"{ns}/b")[0] == b"old"  # type: ignore[index]
    assert store._read(f"{ns}/c") == (b"3", revisions[2])
    assert store._create_many([]) == []
    tasks = [make_task(), make_task()]
    store.create_task(tasks[1])
    created = store.create_tasks(tasks)
    assert created[0] is not None and created[1] is None
    lane = queue_lane("default", "mock", tasks[0].spec.engine_version)
    markers = store._list(f"queue/{lane}/")
    assert any(key.endswith(tasks[0].task_id) for key in markers)  # a worker can find it


def test_swap_and_mark_writes_its_markers_only_with_the_swap(store: JobStore) -> None:
    ns = f"m{uuid.uuid4().hex[:10]}"
    rev = store._create(f"{ns}/record", b"v1")
    store._create(f"{ns}/kept", b"reused")
    store._create(f"{ns}/gone", b"")
    with pytest.raises(StoreConflict):
        store._swap_and_mark(
            f"{ns}/record", b"v2", rev + 1000, create=[f"{ns}/new"], delete=[f"{ns}/gone"]
        )
    assert store._read(f"{ns}/new") is None and store._read(f"{ns}/gone") is not None
    found = store._read(f"{ns}/record")
    assert found is not None and found[0] == b"v1"
    new_rev = store._swap_and_mark(
        f"{ns}/record",
        b"v2",
        rev,
        create=[f"{ns}/new", f"{ns}/kept"],
        delete=[f"{ns}/gone", f"{ns}/never"],
    )
    assert new_rev != rev
    found = store._read(f"{ns}/record")
    assert found is not None and found == (b"v2", new_rev)
    assert store._read(f"{ns}/gone") is None
    kept = store._read(f"{ns}/kept")
    assert kept is not None and kept[0] == b"reused"  # create-only: left as it was
    assert store._list(f"{ns}/") == [f"{ns}/kept", f"{ns}/new", f"{ns}/record"]
    with pytest.raises(StoreConflict):  # the revision moved on
        store._swap_and_mark(f"{ns}/record", b"v3", rev, create=[f"{ns}/late"])
    assert store._read(f"{ns}/late") is None


def test_claim_and_commit_write_their_markers(store: JobStore) -> None:
    job_a, job_b = f"j{uuid.uuid4().hex}", f"j{uuid.uuid4().hex}"
    task = make_task().model_copy(update={"subscribers": [job_a, job_b]})
    store.create_task(task)
    leased = store.claim_task(task.task_id, "w1", 60.0)
    assert leased is not None
    assert f"leases/{task.task_id}" in store._list("leases/")  # the reaper sees the lease
    done, committed = store.commit_result(task.task_id, leased.epoch, make_result())
    assert committed and done.state is TaskState.DONE
    assert f"leases/{task.task_id}" not in store._list("leases/")
    # The commit recorded the outcome for both jobs (computed, not reused).
    assert store.done_task_ids(job_a) == [task.task_id] == store.done_task_ids(job_b)
    assert store.mark_tasks_done(job_a, [task.task_id], reused=True) == []


# ---------------------------------------------------------------------- leases


def _claimed(store: JobStore, worker: str = "w1", lease: float = 60.0) -> Task:
    task = make_task()
    store.create_task(task)
    leased = store.claim_task(task.task_id, worker, lease)
    assert leased is not None and leased.lease is not None
    return leased


def test_heartbeat_fencing(store: JobStore) -> None:
    task = _claimed(store, lease=5.0)
    assert task.lease is not None
    extended = store.heartbeat(task.task_id, task.epoch, 120.0)
    assert extended.lease is not None and extended.lease.expires_at > task.lease.expires_at
    with pytest.raises(StaleLease):
        store.heartbeat(task.task_id, task.epoch + 1, 60.0)
    assert store.claim_task(task.task_id, "w2", 60.0) is None  # held: nobody else gets it


def test_commit_result_fencing(store: JobStore) -> None:
    first = _claimed(store, "w1", lease=0.05)
    time.sleep(0.1)
    second = store.claim_task(first.task_id, "w2", 60.0)
    assert second is not None and second.epoch == first.epoch + 1
    assert second.attempts == 1  # the expiry counted an attempt
    with pytest.raises(StaleLease):
        store.commit_result(first.task_id, first.epoch, make_result())
    task, committed = store.commit_result(first.task_id, second.epoch, make_result())
    assert committed and task.state is TaskState.DONE and task.result is not None
    again, committed_again = store.commit_result(first.task_id, second.epoch, make_result())
    assert not committed_again and again.state is TaskState.DONE
    with pytest.raises(StaleLease):
        store.commit_result(first.task_id, first.epoch, make_result())
    with pytest.raises(StaleLease):
        store.heartbeat(first.task_id, second.epoch, 60.0)


def test_expire_leases_requeues_and_counts_attempt(store: JobStore) -> None:
    task = _claimed(store, lease=0.05)
    live = _claimed(store, lease=60.0)
    time.sleep(0.1)
    changed = store.expire_leases(FAST_RETRY)
    assert [t.task_id for t in changed] == [task.task_id]
    found = store.get_task(task.task_id)
    assert found is not None
    assert found.value.state is TaskState.QUEUED and found.value.attempts == 1
    assert found.value.error is not None and found.value.error.code == "lease_expired"
    assert found.value.history[-1].outcome == "expired"
    held = store.get_task(live.task_id)
    assert held is not None and held.value.state is TaskState.LEASED
    again = store.claim_next("w2", 60.0)
    assert again is not None and again.task_id == task.task_id and again.epoch == task.epoch + 1
    assert store.expire_leases(FAST_RETRY) == []


def test_retry_max_exhausted_dead_letters(store: JobStore) -> None:
    task = _claimed(store, lease=0.05)
    time.sleep(0.1)
    assert store.expire_leases(FAST_RETRY)[0].state is TaskState.QUEUED
    again = store.claim_next("w2", 0.05)
    assert again is not None and again.task_id == task.task_id
    time.sleep(0.1)
    final = store.expire_leases(FAST_RETRY)[0]
    assert final.state is TaskState.FAILED and final.dead_letter and final.attempts == 2
    assert task.task_id in {t.task_id for t in store.dead_letters()}
    assert store.claim_next("w3", 60.0) is None

    error = ErrorInfo(code="bad_input", message="no", source=ErrorSource.COMPUTE)
    permanent = _claimed(store)
    failed = store.fail_task(
        permanent.task_id, permanent.epoch, error, retryable=False, policy=FAST_RETRY
    )
    assert failed.state is TaskState.FAILED and failed.dead_letter and failed.attempts == 1
    retryable = _claimed(store)
    requeued = store.fail_task(
        retryable.task_id, retryable.epoch, error, retryable=True, policy=FAST_RETRY
    )
    assert requeued.state is TaskState.QUEUED and not requeued.dead_letter
    with pytest.raises(StaleLease):
        store.fail_task(
            retryable.task_id, retryable.epoch, error, retryable=True, policy=FAST_RETRY
        )


def test_release_and_requeue(store: JobStore) -> None:
    task = _claimed(store)
    with pytest.raises(StaleLease):
        store.release_task(task.task_id, task.epoch + 5)
    released = store.release_task(task.task_id, task.epoch)
    assert released.state is TaskState.QUEUED and released.lease is None
    assert released.attempts == 0 and released.history[-1].outcome == "released"
    again = store.claim_next("w2", 60.0)
    assert again is not None and again.task_id == task.task_id

    error = ErrorInfo(code="x", message="x", source=ErrorSource.COMPUTE)
    store.fail_task(task.task_id, again.epoch, error, retryable=False, policy=FAST_RETRY)
    requeued = store.requeue_task(task.task_id)
    assert requeued.state is TaskState.QUEUED and requeued.attempts == 0
    assert not requeued.dead_letter and requeued.error is None
    assert task.task_id not in {t.task_id for t in store.dead_letters()}
    third = store.claim_next("w3", 60.0)
    assert third is not None and third.task_id == task.task_id
    assert store.requeue_task(task.task_id).state is TaskState.LEASED  # only failed/cancelled


def test_ready_lanes_keep_unserved_work_out_of_a_workers_way(store: JobStore) -> None:
    """More than a scan's worth of tasks nobody serves (another target, another engine
    version) never hide a task of the lane a worker serves."""
    blocked = [f"tb{i:03d}{uuid.uuid4().hex[:6]}" for i in range(205)]
    for i, task_id in enumerate(blocked):
        task = make_task(task_id)
        if i % 2:
            task.targets = ["nobody"]
        else:
            task.spec.engine_version = "other"
        store.create_task(task)
    wanted = make_task(f"tw{uuid.uuid4().hex[:8]}")
    wanted.ready_at = 1.0  # due after every blocked task
    wanted.targets = ["default", "gpu"]  # two jobs' targets: one marker per lane
    store.create_task(wanted)
    served = [queue_lane("default", "mock", "1")]
    claimed = store.claim_next("w1", 60.0, lanes=served)
    assert claimed is not None and claimed.task_id == wanted.task_id
    assert store.claim_next("w1", 60.0, lanes=[queue_lane("gpu", "mock", "1")]) is None
    assert store.claim_next("w1", 60.0, lanes=served) is None
    assert sorted(task.task_id for task in store.queued_before(time.time(), limit=500)) == sorted(
        blocked
    )
    assert set(store.ready_lanes()) >= {
        queue_lane("nobody", "mock", "1"),
        queue_lane("default", "mock", "other"),
        *served,
    }


# ---------------------------------------------------------------------- jobs, idempotency, blobs


def test_list_jobs_newest_first_with_cursor(store: JobStore) -> None:
    owner = f"owner-{uuid.uuid4().hex[:6]}"
    base = time.time() - 100
    jobs = [make_job(owner, created_at=base + i) for i in range(5)]
    for job in jobs:
        store.create_job(job)
    store.create_job(make_job("someone-else"))
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = store.list_jobs(owner, cursor=cursor, limit=2)
        seen.extend(job.job_id for job in page)
        pages += 1
        if cursor is None:
            break
    assert seen == [job.job_id for job in reversed(jobs)]
    assert pages == 3
    full, last = store.list_jobs(owner, limit=5)
    assert len(full) == 5 and last is None
    assert store.list_jobs("nobody") == ([], None)
    assert {j.job_id for j in jobs} <= set(store.all_job_ids())


def test_active_job_index_names_every_created_job_until_forgotten(store: JobStore) -> None:
    created = 1_700_000_000.5
    job = make_job(created_at=created)
    store.create_job(job)
    assert job.job_id in store.active_job_ids()
    assert store.active_job_since(job.job_id) == created
    store.track_active_job(job.job_id, created + 10)  # idempotent: the first time stays
    assert store.active_job_since(job.job_id) == created
    store.forget_active_job(job.job_id)
    assert job.job_id not in store.active_job_ids()
    assert store.active_job_since(job.job_id) is None
    assert store.get_job(job.job_id) is not None  # the index is not the record
    store.forget_active_job("../jobs")  # a path-like id names nothing
    assert store.active_job_since("../jobs") is None


def test_idempotency_key_claim(store: JobStore) -> None:
    assert store.claim_idempotency_key("alice", "k1", "fp1", "job1") is None
    assert store.claim_idempotency_key("alice", "k1", "fp2", "job2") == ("job1", "fp1")
    assert store.claim_idempotency_key("bob", "k1", "fp3", "job3") is None
    store.release_idempotency_key("alice", "k1")
    assert store.claim_idempotency_key("alice", "k1", "fp4", "job4") is None


def test_artifacts_round_trip_and_cap(store: JobStore) -> None:
    store.put_artifact("job1", "summary.txt", b"ZPE 0.27 eV\n")
    assert store.get_artifact("job1", "summary.txt") == b"ZPE 0.27 eV\n"
    store.put_artifact("job1", "summary.txt", b"v2")
    assert store.get_artifact("job1", "summary.txt") == b"v2"
    big = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    store.put_artifact("job1", "big.bin", big)
    assert store.get_artifact("job1", "big.bin") == big
    assert store.get_artifact("job1", "absent.txt") is None
    assert store.get_artifact("../etc", "passwd") is None
    with pytest.raises(ArtifactTooLarge):
        store.put_artifact("job1", "huge.bin", b"\0" * (store.max_artifact_bytes + 1))
    assert store.get_artifact("job1", "huge.bin") is None


def test_reference_densities_first_write_wins_and_are_pruned_by_age(store: JobStore) -> None:
    old, new = "t" + "1" * 64, "t" + "2" * 64
    assert store.get_reference_density(old) is None
    assert store.put_reference_density(old, b"\x00\xffrho")
    assert not store.put_reference_density(old, b"another")
    assert store.get_reference_density(old) == b"\x00\xffrho"
    assert not store.put_reference_density("../escape", b"x")
    assert store.get_reference_density("../escape") is None
    time.sleep(0.01)
    cutoff = time.time()
    time.sleep(0.01)
    assert store.put_reference_density(new, b"new")
    assert store.prune_reference_densities(cutoff) == 1
    assert store.get_reference_density(old) is None
    assert store.get_reference_density(new) == b"new"
    assert store.prune_reference_densities(time.time() + 1) == 1
    assert store.get_reference_density(new) is None
    # A density left without its age record (a crash between the two writes) goes too.
    store._create("density/t" + "3" * 64, b"orphan")
    store.prune_reference_densities(0.0)
    assert store.get_reference_density("t" + "3" * 64) is None


# ---------------------------------------------------------------------- outage


@pytest.mark.parametrize("backend", ["redis", "gcs"], indirect=True)  # the ones with a server
def test_outage_raises_store_unavailable_then_recovers(backend: Backend) -> None:
    assert backend.server is not None
    store = backend.store
    store.ping()
    backend.server.stop()
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.get_job("some-job")
        assert f"{backend.name} store" in str(info.value)
        with pytest.raises(StoreUnavailable):
            store.ping()
    finally:
        backend.server.start()
    store.ping()
    job = make_job()
    store.create_job(job)
    found = store.get_job(job.job_id)
    assert found is not None and found.value.job_id == job.job_id


@pytest.mark.parametrize("backend", ["redis", "gcs"], indirect=True)
def test_a_sigkilled_server_keeps_every_acknowledged_write(backend: Backend) -> None:
    """The chaos suite SIGKILLs the store server: a fair fault only if the server keeps on
    disk what it acknowledged (redis: AOF; fake-gcs-server: filesystem backend)."""
    assert backend.server is not None
    store = backend.store
    jobs = [make_job() for _ in range(20)]
    for job in jobs:
        store.create_job(job)
    swapped = store.mutate_job(jobs[0].job_id, lambda j: j.model_copy(update={"engine": "qe"}))
    assert swapped.wrote
    backend.server.kill()  # at once: no shutdown, no flush by the server
    backend.server.start()
    for job in jobs:
        found = store.get_job(job.job_id)
        assert found is not None, f"{job.job_id} lost by the SIGKILL"
    found = store.get_job(jobs[0].job_id)
    assert found is not None and (found.rev, found.value.engine) == (swapped.rev, "qe")
    with pytest.raises(AlreadyExists):
        store.create_job(jobs[1])


# ---------------------------------------------------------------------- redis specifics


@pytest.mark.redis
def test_redis_url_options_and_redaction(redis_server: Any) -> None:
    from zpe_core.store.redis import RedisJobStore

    ns = f"t{uuid.uuid4().hex[:12]}"
    store = open_store(f"{redis_server.url}?namespace={ns}&retention=3600")
    assert isinstance(store, RedisJobStore)
    assert store.namespace == ns and store.retention_seconds == 3600
    store.put_artifact("job1", "a.txt", b"x")
    ttl = store.client.ttl(f"{{{ns}}}:b:artifacts/job1/a.txt")
    assert 0 < ttl <= 3600
    store._create("jobs/x", b"{}")
    assert store.client.ttl(f"{{{ns}}}:r:jobs/x") == -1  # records never expire
    store.close()

    closed = RedisJobStore.from_url("redis://user:hunter2secret@127.0.0.1:1/0")
    with pytest.raises(StoreUnavailable) as info:
        closed.ping()
    assert "hunter2secret" not in str(info.value)
    assert "redis store redis://127.0.0.1:1/0" in str(info.value)
