"""The ``JobDispatcher`` port: make sure a worker will run each task."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from zpe_core.jobs.models import Task


class JobDispatcher(ABC):
    """Hands tasks to workers. Implementations: in-process pool, Cloud Tasks, HTTP pull.

    ``dispatch`` is at-least-once and may be called again for a task already
    dispatched (after a restart or by the reaper): workers claim tasks through
    the store, so a duplicate delivery runs nothing twice.
    """

    name: str
    #: Whether ``enqueued_task_ids`` knows which tasks await delivery in a queue.
    tracks_deliveries: bool = False

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start background resources (pools, schedulers)."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop taking work and release resources."""

    def enqueued_task_ids(self) -> set[str]:
        """Task ids with a delivery waiting in the dispatcher's queue (``tracks_deliveries``)."""
        raise NotImplementedError(f"{self.name} keeps no queue of deliveries")

    @abstractmethod
    def dispatch(self, tasks: Sequence[Task]) -> None:
        """Arrange for each task to run at or after its ``ready_at``.

        Raises ``DispatchError`` if it could not.
        """


class PullDispatcher(JobDispatcher):
    """Nothing to push: pull workers lease tasks from the store's ready queue."""

    name = "http-pull"

    def dispatch(self, tasks: Sequence[Task]) -> None:
        return None
