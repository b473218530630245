"""Wiring: the one place that builds a store, a dispatcher and a ``JobService``.

The API opens a ``ControlPlane`` (store, the dispatcher ``ZPE_EXECUTION_MODE``
names, the service, the reaper); the push worker, the ``run-task`` command and
each process of the in-process pool use ``worker_service`` (a service without a
dispatcher: workers never dispatch). Nothing below this module imports it, so
the packages it wires never form a cycle; pull workers never come here (they
hold no store).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

from zpe_core.control.compute_servers import ComputeRegistry
from zpe_core.dispatch.base import JobDispatcher, PullDispatcher
from zpe_core.dispatch.inprocess import InProcessDispatcher, TaskRun
from zpe_core.errors import ConfigurationError, ZpeError
from zpe_core.extras import require_extra
from zpe_core.jobs.maintenance import Reaper
from zpe_core.jobs.runner import run_task
from zpe_core.jobs.service import JobService
from zpe_core.observability.logs import log_context
from zpe_core.settings import ApiSettings, ServiceSettings
from zpe_core.store import JobStore, open_store

log = logging.getLogger("zpe.bootstrap")


def open_job_store(settings: ServiceSettings) -> JobStore:
    """The store ``ZPE_STORE_URL`` names, with the artifact cap of ``settings``."""
    return open_store(settings.store_url, max_artifact_bytes=settings.max_artifact_bytes)


def worker_service(settings: ServiceSettings, store: JobStore | None = None) -> JobService:
    """A worker's service: runs and settles tasks, never dispatches."""
    return JobService(store if store is not None else open_job_store(settings), None, settings)


def build_dispatcher(settings: ApiSettings, store: JobStore, run_here: TaskRun) -> JobDispatcher:
    """The dispatcher ``ZPE_EXECUTION_MODE`` names. ``run_here`` runs a task in this
    process (the in-process pool's threads, used when the store is not shared)."""
    if settings.execution_mode == "inprocess":
        if not store.shared_across_processes:
            return InProcessDispatcher(settings, run_here, use_threads=True)
        return InProcessDispatcher(settings, _run_in_pool_process, initializer=_init_pool_process)
    if settings.execution_mode == "http-pull":
        return PullDispatcher()
    if settings.execution_mode == "cloud-tasks":
        # Imported here: only this mode loads gRPC and the Cloud Tasks client.
        require_extra("google.cloud.tasks_v2", "cloud-tasks", "ZPE_EXECUTION_MODE=cloud-tasks")
        from zpe_core.dispatch.cloud_tasks import CloudTasksDispatcher

        return CloudTasksDispatcher(settings)
    raise ConfigurationError(
        f"ZPE_EXECUTION_MODE={settings.execution_mode} is not available in this build"
    )


@dataclass
class ControlPlane:
    """What the API runs on: the store, the dispatcher, the service and the reaper."""

    settings: ApiSettings
    store: JobStore
    dispatcher: JobDispatcher
    service: JobService
    reaper: Reaper = field(init=False)

    def __post_init__(self) -> None:
        self.reaper = Reaper(
            self.service,
            self.settings.reaper_interval_seconds,
            self.settings.reconcile_interval_seconds,
        )

    @classmethod
    def open(cls, settings: ApiSettings) -> ControlPlane:
        """Open the store and build the dispatcher and the service (nothing started)."""
        store = open_job_store(settings)
        service: JobService | None = None

        def run_here(task_id: str, request_id: str | None) -> str:
            assert service is not None  # bound below, before any dispatch
            worker_id = f"inprocess-{os.getpid()}-{threading.get_ident()}"
            return _run_logged(service, task_id, worker_id, request_id)

        dispatcher = build_dispatcher(settings, store, run_here)
        registry = ComputeRegistry(store, settings)
        service = JobService(store, dispatcher, settings, served_targets=registry.served_targets)
        return cls(settings=settings, store=store, dispatcher=dispatcher, service=service)

    def start(self, *, recover: bool = True) -> None:
        """Start the dispatcher and the reaper; ``recover`` unfinished work in the background."""
        self.dispatcher.start()
        self.reaper.start()
        if recover:
            threading.Thread(target=self._recover, name="zpe-recover", daemon=True).start()

    def stop(self) -> None:
        self.reaper.stop()
        self.dispatcher.stop()
        self.store.close()

    def _recover(self) -> None:
        try:
            count = self.service.recover()
            if count:
                log.info("recovered unfinished tasks", extra={"count": count})
        except ZpeError as exc:
            log.warning("recovery failed; the reaper will retry", extra={"error": exc.message})


def _run_logged(service: JobService, task_id: str, worker_id: str, request_id: str | None) -> str:
    with log_context(request_id=request_id):
        return run_task(service, task_id, worker_id).value


# A process of the in-process pool: its service is built once, by the pool's initializer.
_pool_service: JobService | None = None


def _init_pool_process(settings_json: str) -> None:
    global _pool_service
    _pool_service = worker_service(ServiceSettings.model_validate_json(settings_json))


def _run_in_pool_process(task_id: str, request_id: str | None) -> str:
    assert _pool_service is not None
    return _run_logged(_pool_service, task_id, f"inprocess-{os.getpid()}", request_id)
