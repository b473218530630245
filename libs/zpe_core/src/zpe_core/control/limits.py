"""Per-user and per-client limits: jobs in flight and polling rate.

Both answer ``TooManyRequests`` (429 with ``Retry-After``). The polling limiter
is a token bucket per key (the owner, or the client address for anonymous
callers) held in this process's memory: with several API replicas each one
limits on its own, which is enough to stop a runaway poller. The jobs-in-flight
count reads the owner's newest jobs from the store; two submissions racing
past the limit at the same instant may both pass (a soft limit by design).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

from zpe_core.errors import TooManyRequests
from zpe_core.store.base import JobStore

#: Owner jobs read (newest first) when counting those in flight.
ACTIVE_SCAN_LIMIT = 1000


class TokenBucketLimiter:
    """``rate`` requests per second per key with bursts of ``burst``; bounded memory."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, key: str, *, at: float | None = None) -> float:
        """Take one token for ``key``: 0.0 if allowed, else the seconds until one is free."""
        if self.rate <= 0:
            return 0.0
        t = time.monotonic() if at is None else at
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.burst, t))
            tokens = min(self.burst, tokens + (t - last) * self.rate)
            if tokens >= 1.0:
                tokens -= 1.0
                wait = 0.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, t)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)  # least recently seen
            return wait

    def check(self, key: str) -> None:
        """Raise ``TooManyRequests`` when ``key`` polls faster than allowed."""
        wait = self.acquire(key)
        if wait > 0:
            raise TooManyRequests(
                f"polling too fast: at most {self.rate:g} requests per second "
                f"(bursts of {self.burst:g}); honour Retry-After",
                retry_after=max(1, math.ceil(wait)),
                code="poll_rate_limited",
            )


def active_jobs(store: JobStore, owner: str, *, stop_at: int) -> int:
    """How many of the owner's newest jobs are queued or running (counting stops at ``stop_at``)."""
    count = 0
    cursor: str | None = None
    scanned = 0
    while scanned < ACTIVE_SCAN_LIMIT:
        jobs, cursor = store.list_jobs(owner, cursor=cursor, limit=100)
        scanned += len(jobs)
        count += sum(1 for job in jobs if not job.state.terminal)
        if count >= stop_at or cursor is None:
            break
    return count


def check_active_jobs(store: JobStore, owner: str, limit: int, retry_after: int) -> None:
    """Raise ``TooManyRequests`` if ``owner`` already has ``limit`` jobs in flight (0: none)."""
    if limit <= 0:
        return
    if active_jobs(store, owner, stop_at=limit) >= limit:
        raise TooManyRequests(
            f"{owner} already has {limit} jobs queued or running (the limit per user); "
            "wait for some to finish or cancel them",
            retry_after=retry_after,
            code="too_many_active_jobs",
        )
