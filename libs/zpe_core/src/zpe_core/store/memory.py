"""``memory://``: a process-local store for unit tests and single-process runs."""

from __future__ import annotations

import bisect
import threading

from zpe_core.errors import AlreadyExists, StoreConflict
from zpe_core.store.base import JobStore


class MemoryJobStore(JobStore):
    """Dicts behind one lock. Not shared across processes."""

    shared_across_processes = False
    local_reads = True

    def __init__(self, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self._lock = threading.Lock()
        self._records: dict[str, tuple[bytes, int]] = {}
        self._sorted_keys: list[str] = []
        self._blobs: dict[str, bytes] = {}
        self._next_rev = 1

    def _bump(self) -> int:
        self._next_rev += 1
        return self._next_rev

    def _create(self, key: str, value: bytes) -> int:
        with self._lock:
            if key in self._records:
                raise AlreadyExists(key)
            rev = self._bump()
            self._records[key] = (value, rev)
            bisect.insort(self._sorted_keys, key)
            return rev

    def _read(self, key: str) -> tuple[bytes, int] | None:
        with self._lock:
            return self._records.get(key)

    def _swap(self, key: str, value: bytes, expected_rev: int) -> int:
        with self._lock:
            current = self._records.get(key)
            if current is None or current[1] != expected_rev:
                raise StoreConflict(key)
            rev = self._bump()
            self._records[key] = (value, rev)
            return rev

    def _delete(self, key: str) -> None:
        with self._lock:
            if self._records.pop(key, None) is not None:
                index = bisect.bisect_left(self._sorted_keys, key)
                del self._sorted_keys[index]

    def _list(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> list[str]:
        with self._lock:
            lower = start_after if start_after is not None and start_after >= prefix else prefix
            index = bisect.bisect_right(self._sorted_keys, lower)
            if lower == prefix:
                index = bisect.bisect_left(self._sorted_keys, prefix)
            out: list[str] = []
            for key in self._sorted_keys[index:]:
                if not key.startswith(prefix) or len(out) >= limit:
                    break
                out.append(key)
            return out

    def _put_blob(self, key: str, data: bytes) -> None:
        with self._lock:
            self._blobs[key] = bytes(data)

    def _get_blob(self, key: str) -> bytes | None:
        with self._lock:
            return self._blobs.get(key)

    def ping(self) -> None:
        return None
