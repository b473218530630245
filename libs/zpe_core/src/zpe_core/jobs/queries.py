"""Reading jobs for their owners: status, result, files, search, task states.

Reads only: nothing here writes to the store. A job of another owner is
answered like a missing one (``NotFound``), never as forbidden.
"""

from __future__ import annotations

import json

from zpe_client.models import JobState
from zpe_core.errors import InputError, NotFound, StateConflict
from zpe_core.jobs.models import Job, hill_formula
from zpe_core.physics.artifacts import ARTIFACT_NAMES
from zpe_core.store.base import JobStore


def require_owner(job_id: str, job_owner: str, owner: str | None) -> None:
    """``NotFound`` (never forbidden) unless ``owner`` is the job's or ``None`` (any)."""
    if owner is not None and job_owner != owner:
        raise NotFound(f"job {job_id} not found")


class JobQueries:
    """Owner-checked reads of jobs and their artifacts."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def get_job(self, job_id: str, *, owner: str | None = None) -> tuple[Job, int]:
        """The job and its store revision; ``NotFound`` if absent or not the owner's."""
        found = self.store.get_job(job_id)
        if found is None:
            raise NotFound(f"job {job_id} not found")
        require_owner(job_id, found.value.owner, owner)
        return found.value, found.rev

    def get_result(self, job_id: str, *, owner: str | None = None) -> dict[str, object]:
        job, _ = self.get_job(job_id, owner=owner)
        require_done(job)
        raw = self.store.get_artifact(job_id, ARTIFACT_NAMES["result"])
        if raw is None:
            raise NotFound(f"result of job {job_id} is missing from the store")
        result: dict[str, object] = json.loads(raw)
        return result

    def get_file(self, job_id: str, kind: str, *, owner: str | None = None) -> bytes:
        """An artifact of a done job, or (``kind="input"``, in any state) its pw.x input."""
        if kind not in ARTIFACT_NAMES and kind != "input":
            raise InputError(
                f"unknown file kind {kind!r}; choose one of {sorted([*ARTIFACT_NAMES, 'input'])}",
                code="unknown_file_kind",
            )
        job, _ = self.get_job(job_id, owner=owner)
        if kind == "input":
            return job.request.input_text.encode()
        require_done(job)
        raw = self.store.get_artifact(job_id, ARTIFACT_NAMES[kind])
        if raw is None:
            raise NotFound(f"{kind} of job {job_id} is missing from the store")
        return raw

    def search_jobs(
        self,
        owner: str,
        query: str,
        *,
        cursor: str | None = None,
        limit: int = 20,
        scan_max: int = 1000,
    ) -> tuple[list[Job], str | None]:
        """The owner's jobs whose label, formula or id contains ``query`` (any case).

        Newest first, like ``list_jobs``; reads at most ``scan_max`` jobs per call and
        answers a cursor to go on from where it stopped, so a rare match costs pages,
        never an unbounded scan.
        """
        needle = query.casefold()
        found: list[Job] = []
        scanned = 0
        while len(found) < limit and scanned < scan_max:
            page, cursor = self.store.list_jobs(
                owner, cursor=cursor, limit=min(limit - len(found), scan_max - scanned)
            )
            scanned += len(page)
            found += [job for job in page if needle in _search_text(job)]
            if cursor is None:
                break
        return found, cursor

    def task_states(self, job: Job) -> dict[str, int]:
        """How many of the job's tasks are in each state (reads every task)."""
        counts: dict[str, int] = {}
        for task_id in {ref.task_id for ref in job.tasks}:
            found = self.store.get_task(task_id)
            state = found.value.state.value if found else "missing"
            counts[state] = counts.get(state, 0) + 1
        return counts


def require_done(job: Job) -> None:
    """Raise ``StateConflict`` (``job_not_done``) unless ``job`` is done."""
    if job.state is not JobState.DONE:
        reason = f": {job.error.message}" if job.error else ""
        raise StateConflict(
            f"job {job.job_id} is {job.state.value}, not done{reason}", code="job_not_done"
        )


def _search_text(job: Job) -> str:
    """What ``search_jobs`` matches a query against."""
    return " ".join(
        [job.request.label or "", hill_formula(job.structure.symbols), job.job_id]
    ).casefold()
