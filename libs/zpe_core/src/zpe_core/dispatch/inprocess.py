"""``inprocess``: the embedded default. A bounded pool of worker processes
started by the API process runs the same task code as ``services/worker``.

Tasks whose ``ready_at`` lies in the future (retry backoff) wait in a small
scheduler thread. A worker process that dies costs one task: its lease
expires and the reaper re-queues it. With a ``memory://`` store, which other
processes cannot see, the pool uses threads instead.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from zpe_core.dispatch.base import JobDispatcher
from zpe_core.jobs.models import Task, now
from zpe_core.observability.logs import current_request_id
from zpe_core.settings import ApiSettings

log = logging.getLogger("zpe.dispatch.inprocess")

_MAX_CRASH_RETRIES = 8  # then the periodic reconcile (JobService.reconcile) takes over

#: Runs one task by id (with the submitting request's id, for the logs); returns its outcome.
TaskRun = Callable[[str, str | None], str]


class InProcessDispatcher(JobDispatcher):
    """Runs tasks in a pool of ``ZPE_INPROCESS_CONCURRENCY`` local workers.

    ``run`` runs one task. In a process pool it is pickled by name, so it must be a
    module-level function, and ``initializer`` (called with the settings as JSON)
    prepares each process for it; with ``use_threads`` it may be any callable.
    """

    name = "inprocess"

    def __init__(
        self,
        settings: ApiSettings,
        run: TaskRun,
        *,
        initializer: Callable[[str], None] | None = None,
        use_threads: bool = False,
    ) -> None:
        self.settings = settings
        self._run = run
        self._initializer = initializer
        self._use_threads = use_threads
        self._executor: Executor | None = None
        self._lock = threading.Lock()
        self._delayed: list[tuple[float, str]] = []
        self._wakeup = threading.Condition(self._lock)
        self._stopping = False
        self._scheduler: threading.Thread | None = None
        self._crashes: dict[str, int] = {}

    def _new_executor(self) -> Executor:
        workers = self.settings.inprocess_concurrency
        if self._use_threads:
            return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zpe-task")
        if self._initializer is None:
            return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        return ProcessPoolExecutor(
            max_workers=workers,
            mp_context=get_context("spawn"),
            initializer=self._initializer,
            initargs=(self.settings.model_dump_json(),),
        )

    def start(self) -> None:
        with self._lock:
            self._stopping = False
            if self._executor is None:
                self._executor = self._new_executor()
            if self._scheduler is None:
                self._scheduler = threading.Thread(
                    target=self._schedule_loop, name="zpe-scheduler", daemon=True
                )
                self._scheduler.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wakeup.notify_all()
            executor, self._executor = self._executor, None
        if self._scheduler is not None:
            self._scheduler.join(timeout=5)
            self._scheduler = None
        if executor is None:
            return
        # Taken before shutdown(), which sets the pool's ``_processes`` to None.
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        if isinstance(executor, ProcessPoolExecutor):
            # Without this the pool's processes outlive the API (orphans waiting on a
            # queue nobody feeds). A task cut short here keeps its lease until it
            # expires; then the reaper, or recover() at the next start, re-queues it.
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join(timeout=5)

    def dispatch(self, tasks: Sequence[Task]) -> None:
        t = now()
        # The submitting request's id travels with the task into its worker's log context.
        request_id = current_request_id()
        for task in tasks:
            if task.ready_at > t:
                with self._lock:
                    heapq.heappush(self._delayed, (task.ready_at, task.task_id))
                    self._wakeup.notify()
            else:
                self._submit(task.task_id, request_id)

    def _submit(self, task_id: str, request_id: str | None = None) -> None:
        with self._lock:
            if self._stopping:
                return
            if self._executor is None:
                self._executor = self._new_executor()
            executor = self._executor
        try:
            future: Future[str] = executor.submit(self._run, task_id, request_id)
        except (BrokenProcessPool, RuntimeError):
            # A worker process died and broke the pool: start a new pool and retry once.
            log.warning("worker pool broken; restarting it")
            with self._lock:
                self._executor = self._new_executor()
                executor = self._executor
            future = executor.submit(self._run, task_id, request_id)

        def on_done(f: Future[str]) -> None:
            self._done(task_id, f)

        future.add_done_callback(on_done)

    def _done(self, task_id: str, future: Future[str]) -> None:
        exc = future.exception()
        if exc is None:
            self._crashes.pop(task_id, None)
            return
        # A worker that raised (the store was down, say) may not have claimed the
        # task: try it again later. A claimed task's lease expires and the reaper
        # re-queues it; a second run finds it leased or done and does nothing.
        crashes = self._crashes.get(task_id, 0) + 1
        self._crashes[task_id] = crashes
        log.error(
            "task worker crashed",
            extra={"task_id": task_id, "error": repr(exc), "crashes": crashes},
        )
        with self._lock:
            if isinstance(exc, BrokenProcessPool) and not self._stopping:
                self._executor = self._new_executor()
            if crashes <= _MAX_CRASH_RETRIES and not self._stopping:
                retry_at = now() + min(2.0**crashes, 60.0)
                heapq.heappush(self._delayed, (retry_at, task_id))
                self._wakeup.notify()

    def _schedule_loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and (not self._delayed or self._delayed[0][0] > now()):
                    timeout = self._delayed[0][0] - now() if self._delayed else None
                    self._wakeup.wait(timeout=timeout)
                if self._stopping:
                    return
                _, task_id = heapq.heappop(self._delayed)
            self._submit(task_id)
