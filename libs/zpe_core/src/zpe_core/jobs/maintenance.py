"""The background reaper: re-queues expired leases, fails exhausted tasks, and
every ``reconcile_interval`` seconds repairs what a crash or a store outage left
half-done (``JobService.reconcile``: lost dispatches, uncounted results) and deletes
old shipped reference densities.

The seed system reaped expired leases only when another worker polled, so a
job could sit in ``queued`` forever. Here the control plane runs this loop.
"""

from __future__ import annotations

import logging
import threading
import time

from zpe_core.errors import ZpeError
from zpe_core.jobs.service import JobService

log = logging.getLogger("zpe.maintenance")


class Reaper:
    """Calls ``JobService.reap`` every ``interval`` seconds in a daemon thread,
    and ``JobService.reconcile`` every ``reconcile_interval`` seconds."""

    def __init__(
        self, service: JobService, interval: float, reconcile_interval: float = 60.0
    ) -> None:
        self._service = service
        self._interval = interval
        self._reconcile_interval = reconcile_interval
        self._next_reconcile = time.monotonic() + reconcile_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="zpe-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                changed = self._service.reap()
                if changed:
                    log.info("reaper re-queued or failed expired tasks", extra={"count": changed})
                if time.monotonic() >= self._next_reconcile:
                    redispatched = self._service.reconcile(stale_after=self._reconcile_interval)
                    self._next_reconcile = time.monotonic() + self._reconcile_interval
                    if redispatched:
                        log.info("re-dispatched stale tasks", extra={"count": redispatched})
                    pruned = self._service.prune_reference_densities()
                    if pruned:
                        log.info("pruned old reference densities", extra={"count": pruned})
            except ZpeError as exc:  # store outage: try again next round
                log.warning("reaper round failed", extra={"error": exc.message})
            except Exception:
                log.exception("reaper round crashed")
