"""The background reaper: re-queues expired leases, fails exhausted tasks, and
every ``reconcile_interval`` seconds (``ZPE_RECONCILE_INTERVAL_SECONDS``) repairs what
a crash or a store outage left half-done (``JobService.reconcile``: uncounted results,
missing markers, finishers that died, lost dispatches) and deletes
old shipped reference densities. With a dispatcher that keeps a queue of
deliveries (Cloud Tasks), it also re-dispatches tasks whose delivery vanished
(``JobService.redispatch_lost``), every ``ZPE_REDISPATCH_AFTER_SECONDS / 2``
(between 1 and 60 seconds).

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
        dispatcher = service.dispatcher
        self._lost_interval = (
            min(60.0, max(1.0, service.settings.redispatch_after_seconds / 2))
            if dispatcher is not None and dispatcher.tracks_deliveries
            else None
        )
        self._next_lost = time.monotonic() + (self._lost_interval or 0.0)
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
                    redispatched = self._service.reconcile(
                        stale_after=self._service.settings.redispatch_after_seconds
                    )
                    self._next_reconcile = time.monotonic() + self._reconcile_interval
                    if redispatched:
                        log.info("re-dispatched stale tasks", extra={"count": redispatched})
                    pruned = self._service.prune_reference_densities()
                    if pruned:
                        log.info("pruned old reference densities", extra={"count": pruned})
                if self._lost_interval is not None and time.monotonic() >= self._next_lost:
                    self._next_lost = time.monotonic() + self._lost_interval
                    lost = self._service.redispatch_lost()
                    if lost:
                        log.info("re-dispatched lost deliveries", extra={"count": lost})
            except ZpeError as exc:  # store outage: try again next round
                log.warning("reaper round failed", extra={"error": exc.message})
            except Exception:
                log.exception("reaper round crashed")
