"""The background reaper: re-queues expired leases, fails exhausted tasks.

The seed system reaped expired leases only when another worker polled, so a
job could sit in ``queued`` forever. Here the control plane runs this loop.
"""

from __future__ import annotations

import logging
import threading

from zpe_core.errors import ZpeError
from zpe_core.service import JobService

log = logging.getLogger("zpe.maintenance")


class Reaper:
    """Calls ``JobService.reap`` every ``interval`` seconds in a daemon thread."""

    def __init__(self, service: JobService, interval: float) -> None:
        self._service = service
        self._interval = interval
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
            except ZpeError as exc:  # store outage: try again next round
                log.warning("reaper round failed", extra={"error": exc.message})
            except Exception:
                log.exception("reaper round crashed")
