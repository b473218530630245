"""The ``JobStore`` port.

Semantics every backend guarantees (the contract suite in
``tests/contract/test_store_contract.py`` proves them on each one):

* Records are addressed by string keys made of ``[A-Za-z0-9._/-]``.
* ``_create`` is create-only: it never overwrites and raises ``AlreadyExists``.
* ``_swap`` is compare-and-swap: it writes only if the record is still at the
  revision the caller read, else raises ``StoreConflict``. Revisions are
  integers that change on every write.
* ``_list`` returns keys with a prefix in ascending byte order, paged with
  ``start_after``.
* Any failure to reach the backend raises ``StoreUnavailable``.

Two more, ``_create_many`` (creates in one batch) and ``_swap_and_mark`` (a swap with
the markers it implies), have defaults built on those; a backend overrides them to save
round trips (Redis: a pipeline, one Lua script), never to change what they write.

Backends implement only these primitives (plus blobs and ``ping``); every
typed operation below (jobs, tasks, leases, the ready queue, idempotency keys,
artifacts) is built on them once, here, so all backends behave alike.
A backend may override a typed operation for speed, never for semantics.

No record is hot: a job's own record is written a bounded number of times, and each
task's outcome for a job is a create-only marker of its own (``done/<job>/<task>``,
``mark_tasks_done``), counted by listing (``done_task_ids``); ``claim_finalizer``
elects the one finisher (``finalizing/<job>/<tasks>``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import random
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from zpe_client.models import ErrorInfo, TaskResult, TaskState
from zpe_core.errors import (
    AlreadyExists,
    ArtifactTooLarge,
    NotFound,
    StoreConflict,
    StoreUnavailable,
)
from zpe_core.jobs import transitions
from zpe_core.jobs.models import DEFAULT_TARGET, Job, RetryPolicy, Task, Versioned, now
from zpe_core.observability.metrics import count_store_error

M = TypeVar("M", bound=BaseModel)

DEFAULT_MAX_ARTIFACT_BYTES = 16 * 1024 * 1024
_CAS_ATTEMPTS = 200
_LEASES_REMEMBERED = 10_000


@dataclass(frozen=True)
class Mutation(Versioned[M]):
    """What a read-modify-write left: the record, its revision, and whether this call wrote."""

    wrote: bool


def _owner_key(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


_MS_DIGITS = 15
_LANE_DIGEST = 16


def _ms(t: float) -> str:
    return f"{int(t * 1000):0{_MS_DIGITS}d}"


def queue_lane(target: str, engine: str, engine_version: str) -> str:
    """The ready-queue lane of tasks for ``target`` run by ``engine`` at ``engine_version``.

    ``<target>/<digest of engine and version>``: a worker serves a lane exactly when it
    serves the target and has that engine version, so every marker in a lane it serves
    is one it can run (or a stale hint, removed when seen).
    """
    digest = hashlib.sha256(f"{engine}\n{engine_version}".encode()).hexdigest()
    return f"{target}/{digest[:_LANE_DIGEST]}"


def task_lanes(task: Task) -> list[str]:
    """The lanes a queued task waits in: one per target of its jobs."""
    targets = task.targets or [DEFAULT_TARGET]
    spec = task.spec
    return [
        queue_lane(target, spec.engine, spec.engine_version)
        for target in dict.fromkeys(targets)
        if _safe_id(target)
    ]


class JobStore(ABC):
    """Jobs, tasks, leases, the ready queue and artifacts, with compare-and-swap."""

    #: True when separate processes opening the same URL see the same data.
    shared_across_processes: bool = True
    #: True when reads answer from this machine's memory or local disk (microseconds, no
    #: network that can stall): an event loop may call them directly instead of paying a
    #: thread-pool hop (the API's status poll).
    local_reads: bool = False
    #: Whether a commit first tries the record its claim wrote instead of reading it.
    commit_from_claim: bool = True
    #: Creates of one batch (a submission's tasks and their ready markers) in flight at
    #: once: a backend whose every create is a network round trip sets more than one.
    create_concurrency: int = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Count ``StoreUnavailable`` of every backend's primitives (``zpe_store_errors_total``)."""
        super().__init_subclass__(**kwargs)
        for name in _PRIMITIVES:
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_counts_store_errors", False):
                setattr(cls, name, _counting_store_errors(name.lstrip("_"), method))

    def __init__(self, *, max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES):
        self.max_artifact_bytes = max_artifact_bytes
        self._known_lanes: set[str] = set()  # lanes this process indexed (one write each)
        # The record of each task this process leased, as it last wrote it (claim,
        # heartbeat): the commit's first guess, which saves it a read.
        self._leased: dict[str, Versioned[Task]] = {}

    # ------------------------------------------------------------------ primitives

    @abstractmethod
    def _create(self, key: str, value: bytes) -> int:
        """Write ``value`` at ``key`` only if absent; return its revision."""

    @abstractmethod
    def _read(self, key: str) -> tuple[bytes, int] | None:
        """Return ``(value, revision)`` or ``None`` if absent."""

    @abstractmethod
    def _swap(self, key: str, value: bytes, expected_rev: int) -> int:
        """Replace the record if it is still at ``expected_rev``; return the new revision."""

    @abstractmethod
    def _delete(self, key: str) -> None:
        """Remove ``key`` if present (no error if absent)."""

    @abstractmethod
    def _list(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> list[str]:
        """Keys starting with ``prefix``, ascending, strictly after ``start_after``."""

    @abstractmethod
    def _put_blob(self, key: str, data: bytes) -> None:
        """Write (or overwrite) a blob atomically: readers see the old or the new bytes."""

    @abstractmethod
    def _get_blob(self, key: str) -> bytes | None:
        """Read a blob or ``None``."""

    @abstractmethod
    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the backend answers."""

    def _create_many(self, items: Sequence[tuple[str, bytes]]) -> list[int | None]:
        """``_create`` of each ``(key, value)``: its revision, or None where the key existed.

        Each create is create-only on its own; the batch is not atomic (a crash or an
        outage may leave any of them). Up to ``create_concurrency`` creates in flight at
        once here; a backend may send them in one round trip instead (Redis: a pipeline).
        On an error the creates not yet started are dropped, and the error is raised once
        those in flight have ended (nothing still writes when the caller sees it).
        """
        if self.create_concurrency <= 1 or len(items) <= 1:
            return [self._create_or_none(key, value) for key, value in items]
        workers = min(self.create_concurrency, len(items))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store-create") as pool:
            return list(pool.map(lambda item: self._create_or_none(*item), items))

    def _create_or_none(self, key: str, value: bytes) -> int | None:
        try:
            return self._create(key, value)
        except AlreadyExists:
            return None

    def _swap_and_mark(
        self,
        key: str,
        value: bytes,
        expected_rev: int,
        *,
        create: Sequence[str] = (),
        delete: Sequence[str] = (),
    ) -> int:
        """``_swap``, then create the empty markers ``create`` (create-only: one that is
        there is left as it is) and delete the keys ``delete``; return the new revision.

        Nothing is written if the swap fails (``StoreConflict``). Here the writes follow
        one another, so an outage or a crash after the swap leaves markers unwritten
        (what ``reconcile`` repairs); a backend that can make them one atomic round trip
        overrides this (Redis).
        """
        rev = self._swap(key, value, expected_rev)
        self._create_many([(marker, b"") for marker in create])
        for marker in delete:
            self._delete(marker)
        return rev

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (optional)."""

    def _revision(self, key: str) -> int | None:
        """The revision of a record, or ``None``; backends that can skip the value do."""
        found = self._read(key)
        return None if found is None else found[1]

    def _count(self, prefix: str) -> int:
        """How many keys start with ``prefix``; backends that can count without listing do."""
        return sum(1 for _ in self._iter_keys(prefix))

    # ------------------------------------------------------------------ generic helpers

    def _get_model(self, key: str, model: type[M]) -> Versioned[M] | None:
        found = self._read(key)
        if found is None:
            return None
        return Versioned(model.model_validate_json(found[0]), found[1])

    def _mutate(
        self,
        key: str,
        model: type[M],
        change: Callable[[M], M | None],
        *,
        markers: Callable[[M], tuple[list[str], list[str]]] | None = None,
        guess: Versioned[M] | None = None,
    ) -> Mutation[M]:
        """Read-modify-write with compare-and-swap, retried on conflict.

        ``change`` receives a private copy and returns the new record, or ``None``
        to leave the record as it is (``wrote`` False). It may raise to abort; nothing
        is written. On a lost compare-and-swap it runs again on the newer record, so
        whether it wrote is only known from the result. ``markers`` names, for the new
        record, the markers to create and the keys to delete with the write
        (``_swap_and_mark``). ``guess``: the record as this process last wrote it, tried
        first instead of a read; the compare-and-swap proves it current, and if it is
        not (or ``change`` does not apply to it) the record is read as usual.
        """
        _require_safe_key(key)
        for attempt in range(_CAS_ATTEMPTS):
            guessed, current = guess is not None, guess or self._get_model(key, model)
            guess = None
            if current is None:
                raise NotFound(f"{key.split('/')[0].rstrip('s')} {key.split('/', 1)[-1]} not found")
            try:
                updated = change(current.value.model_copy(deep=True))
            except Exception:
                if guessed:
                    continue  # judged on a record that may be stale: read it
                raise
            if updated is None:
                if guessed:
                    continue
                return Mutation(current.value, current.rev, wrote=False)
            if hasattr(updated, "updated_at"):
                updated.updated_at = now()
            payload = updated.model_dump_json().encode()
            try:
                if markers is None:
                    rev = self._swap(key, payload, current.rev)
                else:
                    create, delete = markers(updated)
                    for marker in (*create, *delete):
                        _require_safe_key(marker)
                    rev = self._swap_and_mark(
                        key, payload, current.rev, create=create, delete=delete
                    )
            except StoreConflict:
                if not guessed:
                    time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
                continue
            return Mutation(updated, rev, wrote=True)
        raise StoreUnavailable(f"too much contention updating {key}; try again")

    # ------------------------------------------------------------------ jobs

    def create_job(self, job: Job) -> Versioned[Job]:
        """Create a job (never overwrites) and index it under its owner and, first, among
        the active jobs (so no job can exist that the reconciler does not see)."""
        self.track_active_job(job.job_id, job.created_at)
        rev = self._create(f"jobs/{job.job_id}", job.model_dump_json().encode())
        inverted = 10**15 - int(job.created_at * 1000)
        index = f"owners/{_owner_key(job.owner)}/{inverted:015d}-{job.job_id}"
        with contextlib.suppress(AlreadyExists):
            self._create(index, b"")
        return Versioned(job, rev)

    def get_job(self, job_id: str) -> Versioned[Job] | None:
        if not _safe_id(job_id):
            return None
        return self._get_model(f"jobs/{job_id}", Job)

    def job_revision(self, job_id: str) -> int | None:
        """The revision of a job's record (``None``: no such job), without its value:
        whether a copy read earlier (``get_job``) is still current, for a status poll."""
        if not _safe_id(job_id):
            return None
        return self._revision(f"jobs/{job_id}")

    def mutate_job(self, job_id: str, change: Callable[[Job], Job | None]) -> Mutation[Job]:
        return self._mutate(f"jobs/{job_id}", Job, change)

    def list_jobs(
        self, owner: str, *, cursor: str | None = None, limit: int = 20
    ) -> tuple[list[Job], str | None]:
        """The owner's jobs, newest first; returns the page and the next cursor."""
        prefix = f"owners/{_owner_key(owner)}/"
        keys = self._list(prefix, start_after=prefix + cursor if cursor else None, limit=limit + 1)
        page_keys = keys[:limit]
        jobs: list[Job] = []
        for key in page_keys:
            job_id = key.rsplit("-", 1)[-1]
            found = self.get_job(job_id)
            if found is not None:
                jobs.append(found.value)
        next_cursor = page_keys[-1][len(prefix) :] if len(keys) > limit else None
        return jobs, next_cursor

    def all_job_ids(self, *, limit: int | None = None) -> list[str]:
        """Every job id (for recovery and admin scans), or the first ``limit`` of them."""
        return [key.split("/", 1)[1] for key in self._iter_keys("jobs/", limit=limit)]

    # The active-job index (``active/<job>``, value: the job's creation time) lets the
    # periodic reconcile visit only jobs that may need repair, not every job ever run.
    # It is written before the job record and removed by the reconciler once the job has
    # ended, so it may name ended or never-created jobs, never miss a live one.

    def track_active_job(self, job_id: str, created_at: float) -> None:
        """Put ``job_id`` in the active-job index (idempotent)."""
        key = f"active/{job_id}"
        _require_safe_key(key)
        with contextlib.suppress(AlreadyExists):
            self._create(key, repr(created_at).encode())

    def active_job_ids(self) -> list[str]:
        """The ids in the active-job index: every job not known to have ended."""
        return [key.split("/", 1)[1] for key in self._iter_keys("active/")]

    def active_job_since(self, job_id: str) -> float | None:
        """When ``job_id`` entered the active-job index, or None if it is not in it."""
        found = self._read(f"active/{job_id}") if _safe_id(job_id) else None
        return float(found[0]) if found is not None else None

    def forget_active_job(self, job_id: str) -> None:
        """Take an ended (or never created) job out of the active-job index."""
        if _safe_id(job_id):
            self._delete(f"active/{job_id}")

    # ------------------------------------------------------------------ job progress
    #
    # A job's progress lives beside its record, never in it: one create-only marker per
    # done task (``done/<job>/<task>``), so a task's outcome writes a key of its own and
    # the job record is written O(1) times whatever the job's size (Cloud Storage takes
    # about one write per second to one object name). ``finalizing/<job>/<total>``
    # (create-only) elects the one committer that finishes the job.

    def mark_tasks_done(
        self, job_id: str, task_ids: Iterable[str], *, reused: bool = False
    ) -> list[str]:
        """Mark tasks of a job done (create-only ``done/<job>/<task>``); idempotent.

        Returns the ids this call marked, and with ``reused`` also those an earlier
        call marked as reused (so a repeat after a crash still counts them as reused).
        """
        marked: list[str] = []
        value = b"reused" if reused else b""
        for task_id in dict.fromkeys(task_ids):
            key = f"done/{job_id}/{task_id}"
            _require_safe_key(key)
            try:
                self._create(key, value)
            except AlreadyExists:
                if reused:
                    found = self._read(key)
                    if found is not None and found[0] == value:
                        marked.append(task_id)
                continue
            marked.append(task_id)
        return marked

    def done_task_ids(self, job_id: str) -> list[str]:
        """The tasks of a job marked done (``mark_tasks_done``), in key order."""
        if not _safe_id(job_id):
            return []
        prefix = f"done/{job_id}/"
        return [key[len(prefix) :] for key in self._iter_keys(prefix)]

    def count_done_tasks(self, job_id: str) -> int:
        """How many tasks of a job are marked done: ``len(done_task_ids(job_id))``,
        without listing the ids where the backend can count."""
        if not _safe_id(job_id):
            return 0
        return self._count(f"done/{job_id}/")

    def claim_finalizer(self, job_id: str, total_tasks: int) -> bool:
        """Whether this caller finishes the job at ``total_tasks`` tasks (exactly one
        caller per job and size gets True; a job that grows gets a new election)."""
        # A value of this call's own: a backend that retries a create after a lost answer
        # (GCS: 429, then 412) takes a marker holding its bytes for its own write, so an
        # empty marker would elect every caller whose create was retried.
        try:
            self._create(f"finalizing/{job_id}/{total_tasks}", secrets.token_hex(16).encode())
        except AlreadyExists:
            return False
        return True

    # ------------------------------------------------------------------ idempotency

    def claim_idempotency_key(
        self, owner: str, key: str, fingerprint: str, job_id: str
    ) -> tuple[str, str] | None:
        """Bind ``(owner, key)`` to ``job_id`` unless already bound.

        Returns ``None`` if this call bound it, else the existing
        ``(job_id, fingerprint)`` so the caller can compare payloads.
        """
        digest = hashlib.sha256(key.encode()).hexdigest()[:40]
        record_key = f"idem/{_owner_key(owner)}/{digest}"
        value = json.dumps({"job_id": job_id, "fingerprint": fingerprint}).encode()
        try:
            self._create(record_key, value)
            return None
        except AlreadyExists:
            found = self._read(record_key)
            if found is None:  # removed in between: try once more
                return self.claim_idempotency_key(owner, key, fingerprint, job_id)
            existing = json.loads(found[0])
            return existing["job_id"], existing["fingerprint"]

    def release_idempotency_key(self, owner: str, key: str) -> None:
        """Forget a binding whose job could not be created."""
        digest = hashlib.sha256(key.encode()).hexdigest()[:40]
        self._delete(f"idem/{_owner_key(owner)}/{digest}")

    # ------------------------------------------------------------------ tasks

    def create_task(self, task: Task) -> Versioned[Task]:
        """Create a task (raises ``AlreadyExists`` if its content key is known)."""
        rev = self._create(f"tasks/{task.task_id}", task.model_dump_json().encode())
        if task.state is TaskState.QUEUED:
            self.mark_ready(task)
        return Versioned(task, rev)

    def create_tasks(self, tasks: Sequence[Task]) -> list[Versioned[Task] | None]:
        """``create_task`` for several tasks in two batched writes (``_create_many``: the
        records, then the ready markers of those created queued): each task as created,
        or None where its content key was known already."""
        revisions = self._create_many(
            [(f"tasks/{task.task_id}", task.model_dump_json().encode()) for task in tasks]
        )
        created = [
            None if rev is None else Versioned(task, rev)
            for task, rev in zip(tasks, revisions, strict=True)
        ]
        self._mark_ready_many(
            [made.value for made in created if made and made.value.state is TaskState.QUEUED]
        )
        return created

    def get_task(self, task_id: str) -> Versioned[Task] | None:
        if not _safe_id(task_id):
            return None
        return self._get_model(f"tasks/{task_id}", Task)

    def mutate_task(self, task_id: str, change: Callable[[Task], Task | None]) -> Mutation[Task]:
        return self._mutate(f"tasks/{task_id}", Task, change)

    def all_task_ids(self) -> list[str]:
        return [key.split("/", 1)[1] for key in self._iter_keys("tasks/")]

    # ------------------------------------------------------------------ ready queue and leases

    def mark_ready(self, task: Task) -> None:
        """Put a queue marker for a task in each lane it is wanted in (its targets).

        Markers are hints; the task record decides.
        """
        self._mark_ready_many([task])

    def _mark_ready_many(self, tasks: Sequence[Task]) -> None:
        markers: list[tuple[str, bytes]] = []
        for task in tasks:
            for lane in task_lanes(task):
                self._register_lane(lane)
                markers.append((f"queue/{lane}/{_ms(task.ready_at)}-{task.task_id}", b""))
        if markers:
            self._create_many(markers)

    def _register_lane(self, lane: str) -> None:
        """Index a lane (``lanes/<engine digest>-<target>``) once, for scans of every lane."""
        if lane in self._known_lanes:
            return
        target, digest = lane.split("/")
        with contextlib.suppress(AlreadyExists):
            self._create(f"lanes/{digest}-{target}", b"")
        self._known_lanes.add(lane)

    def ready_lanes(self) -> list[str]:
        """Every lane that ever held a ready marker."""
        lanes = []
        for key in self._iter_keys("lanes/"):
            name = key[len("lanes/") :]
            lanes.append(f"{name[_LANE_DIGEST + 1 :]}/{name[:_LANE_DIGEST]}")
        return lanes

    def _due_markers(self, lane: str, before: float) -> Iterator[tuple[str, str]]:
        """``(marker name, key)`` of the markers of ``lane`` due by ``before``, oldest first."""
        prefix = f"queue/{lane}/"
        horizon = f"{_ms(before)}~"
        start: str | None = None
        while True:
            page = self._list(prefix, start_after=start, limit=200)
            for key in page:
                name = key[len(prefix) :]
                if name > horizon:
                    return
                yield name, key
            if len(page) < 200:
                return
            start = page[-1]

    def claim_task(
        self, task_id: str, worker_id: str, lease_seconds: float, *, ignore_ready_at: bool = False
    ) -> Task | None:
        """Lease one named task if it is queued (and due) or its lease expired.

        Returns the leased task (with its new ``epoch``) or ``None`` if someone
        else holds it or it is settled. Exactly one concurrent caller wins.
        """
        result = self._mutate(
            f"tasks/{task_id}",
            Task,
            lambda task: transitions.claim(
                task, worker_id, lease_seconds, ignore_ready_at=ignore_ready_at
            ),
            markers=lambda task: ([f"leases/{task_id}"], []),  # so the reaper sees the lease
        )
        if not result.wrote:
            return None
        self._remember_lease(task_id, result)
        return result.value

    def _remember_lease(self, task_id: str, written: Versioned[Task]) -> None:
        if len(self._leased) >= _LEASES_REMEMBERED:
            self._leased.clear()  # leases never settled here (lost, or given up): forget them
        # A copy: the caller's task may be changed in place; the guess must stay as written.
        self._leased[task_id] = Versioned(written.value.model_copy(deep=True), written.rev)

    def track_lease(self, task_id: str) -> None:
        """Make sure the reaper sees the lease of ``task_id`` (its ``leases/`` marker).

        The claim writes the marker with its compare-and-swap (``_swap_and_mark``); where
        that is two writes, an outage between them leaves a leased task the reaper cannot
        find, and ``reconcile`` calls this for every leased task whose lease has expired.
        """
        with contextlib.suppress(AlreadyExists):
            self._create(f"leases/{task_id}", b"")

    def claim_next(
        self,
        worker_id: str,
        lease_seconds: float,
        *,
        lanes: Iterable[str] | None = None,
        accept: Callable[[Task], bool] | None = None,
        scan_limit: int = 200,
    ) -> Task | None:
        """Lease the earliest due queued task of ``lanes`` that ``accept`` allows, or ``None``.

        ``lanes`` (see ``queue_lane``) are the ones the worker serves; ``None``: every lane.
        A worker looks only at its own lanes, so tasks that no worker of a lane can run
        (another target, another engine version) never stand in front of its work.
        """
        chosen = self.ready_lanes() if lanes is None else list(dict.fromkeys(lanes))
        t = now()
        heads: list[tuple[str, str]] = []
        for lane in chosen:
            heads.extend(itertools.islice(self._due_markers(lane, t), scan_limit))
        for name, marker in sorted(heads):
            task_id = name[_MS_DIGITS + 1 :]
            found = self.get_task(task_id)
            if found is None or found.value.state is not TaskState.QUEUED:
                self._delete(marker)
                continue
            if name < _ms(found.value.ready_at):
                # Superseded (re-queued later, with its own newer marker): never let such
                # hints pile up at the head of a lane.
                self._delete(marker)
                continue
            if accept is not None and not accept(found.value):
                continue
            task = self.claim_task(task_id, worker_id, lease_seconds)
            if task is not None:
                self._delete(marker)
                return task
        return None

    def queued_before(self, before: float, *, limit: int = 500) -> list[Task]:
        """Queued tasks that were due before ``before``, oldest first (for reconcilers).

        Walks the ready markers of every lane and removes, on the way, those of tasks
        that are no longer queued or were re-queued since (markers are hints).
        """
        found_tasks: dict[str, Task] = {}
        for lane in self.ready_lanes():
            seen = 0
            for name, marker in self._due_markers(lane, before):
                task_id = name[_MS_DIGITS + 1 :]
                if task_id in found_tasks:
                    continue
                found = self.get_task(task_id)
                if found is None or found.value.state is not TaskState.QUEUED:
                    self._delete(marker)
                elif name < _ms(found.value.ready_at):
                    self._delete(marker)  # superseded: a newer marker exists
                elif found.value.ready_at < before:
                    found_tasks[task_id] = found.value
                    seen += 1
                    if seen >= limit:
                        break
        ordered = sorted(found_tasks.values(), key=lambda task: (task.ready_at, task.task_id))
        return ordered[:limit]

    def heartbeat(self, task_id: str, epoch: int, lease_seconds: float) -> Task:
        """Extend a live lease; raises ``StaleLease`` if ``epoch`` is not current."""
        change = functools.partial(transitions.heartbeat, epoch=epoch, lease_seconds=lease_seconds)
        extended = self.mutate_task(task_id, change)
        if extended.wrote:
            self._remember_lease(task_id, extended)
        return extended.value

    def commit_result(self, task_id: str, epoch: int, result: TaskResult) -> tuple[Task, bool]:
        """Record a result under a live lease.

        Returns ``(task, committed)``: ``committed`` is True for the one call that
        moved the task to done. A repeat by the same epoch after it committed is
        answered ``(task, False)``; any other stale epoch raises ``StaleLease``.

        The write that commits also marks the task done for every job subscribed to
        it (``done/<job>/<task>``, as ``mark_tasks_done``) and drops its lease marker, so
        a call that returns ``committed`` has recorded the task's outcome for its jobs.
        """

        def markers(task: Task) -> tuple[list[str], list[str]]:
            jobs = [job_id for job_id in dict.fromkeys(task.subscribers) if _safe_id(job_id)]
            return [f"done/{job_id}/{task_id}" for job_id in jobs], [f"leases/{task_id}"]

        done = self._mutate(
            f"tasks/{task_id}",
            Task,
            lambda task: transitions.commit(task, epoch, result),
            markers=markers,
            guess=self._leased.pop(task_id, None) if self.commit_from_claim else None,
        )
        if not done.wrote:
            self._delete(f"leases/{task_id}")  # a repeat: the marker may have outlived a crash
        return done.value, done.wrote

    def fail_task(
        self,
        task_id: str,
        epoch: int | None,
        error: ErrorInfo,
        *,
        retryable: bool,
        policy: RetryPolicy,
    ) -> Task:
        """Record a failed attempt: re-queue with backoff, or dead-letter it.

        ``epoch=None`` fails the task whatever its lease (used by dispatchers
        that could not deliver it at all).
        """

        def change(task: Task) -> Task | None:
            return transitions.fail(task, epoch, error, retryable=retryable, policy=policy)

        self._leased.pop(task_id, None)
        task = self.mutate_task(task_id, change).value
        self._delete(f"leases/{task_id}")
        if task.state is TaskState.QUEUED:
            self.mark_ready(task)
        return task

    def release_task(self, task_id: str, epoch: int) -> Task:
        """Give a lease back without counting an attempt (graceful shutdown)."""
        self._leased.pop(task_id, None)
        change = functools.partial(transitions.release, epoch=epoch)
        task = self.mutate_task(task_id, change).value
        self._delete(f"leases/{task_id}")
        self.mark_ready(task)
        return task

    def expire_leases(self, policy: RetryPolicy) -> list[Task]:
        """Re-queue (or dead-letter) every task whose lease has expired.

        Each expiry counts an attempt. Returns the tasks that changed.
        """
        changed: list[Task] = []
        for marker in list(self._iter_keys("leases/")):
            task_id = marker.split("/", 1)[1]
            found = self.get_task(task_id)
            if found is None or found.value.state is not TaskState.LEASED:
                self._delete(marker)
                continue
            lease = found.value.lease
            if lease is None or lease.expires_at > now():
                continue
            change = functools.partial(transitions.expire, expired_epoch=lease.epoch, policy=policy)
            expired = self.mutate_task(task_id, change)
            if expired.wrote:
                self._delete(marker)
                if expired.value.state is TaskState.QUEUED:
                    self.mark_ready(expired.value)
                changed.append(expired.value)
        return changed

    def requeue_task(self, task_id: str) -> Task:
        """Put a failed or cancelled task back in the queue with fresh attempts."""
        task = self.mutate_task(task_id, transitions.requeue).value
        if task.state is TaskState.QUEUED:
            self.mark_ready(task)
        return task

    def dead_letters(self) -> list[Task]:
        """Tasks that failed for good."""
        out = []
        for task_id in self.all_task_ids():
            found = self.get_task(task_id)
            if found is not None and found.value.dead_letter:
                out.append(found.value)
        return out

    # ------------------------------------------------------------------ artifacts

    def put_artifact(self, job_id: str, name: str, data: bytes) -> None:
        _require_safe_key(f"artifacts/{job_id}/{name}")
        if len(data) > self.max_artifact_bytes:
            raise ArtifactTooLarge(
                f"artifact {name!r} is {len(data)} bytes; the store accepts at most "
                f"{self.max_artifact_bytes}"
            )
        self._put_blob(f"artifacts/{job_id}/{name}", data)

    def get_artifact(self, job_id: str, name: str) -> bytes | None:
        if not _safe_id(job_id) or not _safe_id(name):
            return None
        return self._get_blob(f"artifacts/{job_id}/{name}")

    # ------------------------------------------------------------------ reference densities

    def put_reference_density(self, reference_key: str, data: bytes) -> bool:
        """Keep the packed converged density of reference task ``reference_key`` for other
        workers' warm starts. Create-only (the first write wins): False if one is there."""
        if not _safe_id(reference_key):
            return False
        try:
            self._create(f"density/{reference_key}", data)
        except AlreadyExists:
            return False
        with contextlib.suppress(AlreadyExists):
            self._create(f"density-index/{_ms(now())}-{reference_key}", b"")
        return True

    def get_reference_density(self, reference_key: str) -> bytes | None:
        if not _safe_id(reference_key):
            return None
        found = self._read(f"density/{reference_key}")
        return None if found is None else found[0]

    def prune_reference_densities(self, stored_before: float) -> int:
        """Delete the reference densities stored before ``stored_before`` (and any left
        without an age by a crash between its two writes); returns how many."""
        prefix, cutoff = "density-index/", f"density-index/{_ms(stored_before)}"
        indexed: set[str] = set()
        pruned = 0
        for key in self._iter_keys(prefix):
            reference_key = key[len(prefix) + 16 :]  # after '<ms>-'
            if key >= cutoff:
                indexed.add(reference_key)
                continue
            self._delete(f"density/{reference_key}")
            self._delete(key)
            pruned += 1
        for key in self._iter_keys("density/"):
            if key[len("density/") :] not in indexed:
                self._delete(key)  # pruned above, or never indexed
        return pruned

    # ------------------------------------------------------------------ documents

    def create_document(self, key: str, document: M) -> Versioned[M]:
        """Create a small record under ``meta/<key>`` (never overwrites: ``AlreadyExists``).

        For everything that is not a job or a task: worker servers, token hashes,
        operations switches, audit entries.
        """
        _require_safe_key(f"meta/{key}")
        rev = self._create(f"meta/{key}", document.model_dump_json().encode())
        return Versioned(document, rev)

    def get_document(self, key: str, model: type[M]) -> Versioned[M] | None:
        if not _safe_key(key):
            return None
        return self._get_model(f"meta/{key}", model)

    def mutate_document(
        self, key: str, model: type[M], change: Callable[[M], M | None]
    ) -> Mutation[M]:
        """Compare-and-swap update of a document, retried on conflict."""
        return self._mutate(f"meta/{key}", model, change)

    def delete_document(self, key: str) -> None:
        if _safe_key(key):
            self._delete(f"meta/{key}")

    def list_documents(self, prefix: str) -> list[str]:
        """Keys (without ``meta/``) of the documents under ``meta/<prefix>``."""
        if not _safe_key(prefix, prefix=True):
            return []
        return [key[len("meta/") :] for key in self._iter_keys(f"meta/{prefix}")]

    def read_documents(self, keys: Iterable[str], model: type[M]) -> list[M]:
        """The documents at ``keys``, in that order, skipping any deleted meanwhile."""
        found = (self.get_document(key, model) for key in keys)
        return [item.value for item in found if item is not None]

    def _iter_keys(self, prefix: str, *, limit: int | None = None) -> list[str]:
        keys: list[str] = []
        start: str | None = None
        while True:
            size = 1000 if limit is None else min(1000, limit - len(keys))
            if size <= 0:
                return keys
            page = self._list(prefix, start_after=start, limit=size)
            keys.extend(page)
            if len(page) < size:
                return keys
            start = page[-1]


_PRIMITIVES = (
    "_create",
    "_create_many",
    "_read",
    "_revision",
    "_swap",
    "_swap_and_mark",
    "_delete",
    "_list",
    "_count",
    "_put_blob",
    "_get_blob",
    "ping",
)


def _counting_store_errors(operation: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a store primitive so each ``StoreUnavailable`` it raises is counted once."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except StoreUnavailable as exc:
            if not getattr(exc, "_zpe_counted", False):
                exc._zpe_counted = True  # type: ignore[attr-defined]
                count_store_error(operation)
            raise

    wrapper._counts_store_errors = True  # type: ignore[attr-defined]
    return wrapper


#: One path segment of a store key: ASCII letters, digits and ``._-``, not starting
#: with a dot (so never ``.``, ``..`` or a hidden name), at most 200 characters.
_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


def _safe_id(value: str) -> bool:
    """Whether ``value`` can be one segment of a key (it names no other directory)."""
    return _SAFE_ID.fullmatch(value) is not None


def _safe_key(key: str, *, prefix: bool = False) -> bool:
    """Whether every ``/``-separated segment of ``key`` is a safe id.

    With ``prefix``, the last segment may also be empty or partial (``queue/``, ``queue/00``).
    """
    parts = key.split("/")
    if prefix:
        last = parts.pop()
        if last and not _safe_id(last):
            return False
    return all(_safe_id(part) for part in parts)


def _require_safe_key(key: str) -> None:
    """Refuse a key with a path-like segment: it names no record (``NotFound``)."""
    if not _safe_key(key):
        raise NotFound(f"no record {key!r}: ids are letters, digits and ._- (no leading dot)")
