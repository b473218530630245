"""The read path of a status poll: a job's status from its revision and its done count.

A poll (``GET /calc/zpe/jobs/{id}``) reads the revision of the job's record
(``JobStore.job_revision``: not its value) and, while the job runs, counts its
done markers (``count_done``). The record itself (every task reference of a
385-task job) is read and parsed only when its revision is one this process has
not seen: a record is written O(1) times per job, so that is O(1) parses per job
and process, not one per poll. What is kept per job is the status it renders to
(a few hundred bytes; a finished job's whole answer), never the job.

Revisions never repeat for a key (the store contract), so a kept status whose
revision equals the record's is that record's; progress comes from the markers on
every poll, so a task that finishes shows at the next poll, with a new ETag.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zpe_core.jobs.models import Job, now
from zpe_core.jobs.outcomes import count_done, done_task_ids
from zpe_core.jobs.queries import require_owner
from zpe_core.jobs.service import JobService


def encode(content: dict[str, Any]) -> bytes:
    """JSON as Starlette's ``JSONResponse`` renders it (compact, UTF-8)."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


@dataclass(frozen=True)
class StatusSnapshot:
    """What a poll needs of one revision of a job's record."""

    rev: int
    owner: str
    terminal: bool
    #: Ended: its done count (on its record). Running: the done ids its record lists
    #: (empty but for records written before done markers existed).
    done_final: int
    done_on_record: frozenset[str]
    #: The status as JSON, without what changes between polls of a running job.
    body: dict[str, Any]
    #: An ended job's whole answer (nothing in it changes any more).
    final: bytes | None


#: Renders a running job's ``body`` for ``done`` tasks at a time: ``(body, done, now)``.
Render = Callable[[dict[str, Any], int, float], dict[str, Any]]
#: The JSON status of a job with ``done`` tasks done, at a time: ``(job, done, now)``.
Snapshot = Callable[[Job, int, float], dict[str, Any]]


@dataclass(frozen=True)
class StatusPoll:
    """One poll's answer: the snapshot and how many of the job's tasks are done."""

    snapshot: StatusSnapshot
    done: int

    @property
    def etag(self) -> str:
        # Moves with the record's revision and with the count of done tasks (which only
        # grows while the job runs): the same tag as before this cache existed.
        return f'"{self.snapshot.rev:x}.{self.done:x}"'

    def content(self, render: Render, now: float) -> bytes:
        if self.snapshot.final is not None:
            return self.snapshot.final
        return encode(render(self.snapshot.body, self.done, now))


class StatusCache:
    """The statuses of the jobs polled lately (``size`` at most), by revision."""

    def __init__(self, service: JobService, snapshot: Snapshot, *, size: int = 512) -> None:
        self.service = service
        self._snapshot = snapshot
        self.size = size
        self._entries: OrderedDict[str, StatusSnapshot] = OrderedDict()
        self._lock = threading.Lock()

    def poll(self, job_id: str, *, owner: str | None) -> StatusPoll:
        """The job's status for ``owner``; ``NotFound`` if absent or not the owner's."""
        store = self.service.store
        rev = store.job_revision(job_id)
        with self._lock:
            kept = self._entries.get(job_id)
            if kept is not None:
                self._entries.move_to_end(job_id)
        if rev is None or kept is None or kept.rev != rev:
            kept = self._read(job_id)  # NotFound when gone
        require_owner(job_id, kept.owner, owner)
        if kept.terminal:
            return StatusPoll(kept, kept.done_final)
        return StatusPoll(kept, count_done(store, job_id, kept.done_on_record))

    def _read(self, job_id: str) -> StatusSnapshot:
        try:
            job, rev = self.service.get_job(job_id)
        except Exception:
            self.forget(job_id)
            raise
        terminal = job.state.terminal
        done = len(done_task_ids(self.service.store, job)) if terminal else 0
        body = self._snapshot(job, done, now())
        kept = StatusSnapshot(
            rev=rev,
            owner=job.owner,
            terminal=terminal,
            done_final=done,
            done_on_record=frozenset() if terminal else frozenset(job.done_task_ids),
            body=body,
            final=encode(body) if terminal else None,
        )
        with self._lock:
            self._entries[job_id] = kept
            self._entries.move_to_end(job_id)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return kept

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._entries.pop(job_id, None)
