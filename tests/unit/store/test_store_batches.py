"""A store's batched creates (``JobStore._create_many``) with several creates in flight."""

from __future__ import annotations

import threading
import time

import pytest

from zpe_core.errors import StoreUnavailable
from zpe_core.store.memory import MemoryJobStore


class SlowMemoryStore(MemoryJobStore):
    """A memory store whose creates take a while (a network round trip) and can fail."""

    create_concurrency = 8

    def __init__(self, *, fail_key: str | None = None) -> None:
        super().__init__()
        self.fail_key = fail_key
        self.in_flight = 0
        self.most_in_flight = 0
        self._gauge = threading.Lock()

    def _create(self, key: str, value: bytes) -> int:
        with self._gauge:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(0.01)
            if key == self.fail_key:
                raise StoreUnavailable("memory store unavailable during create: test outage")
            return super()._create(key, value)
        finally:
            with self._gauge:
                self.in_flight -= 1


def test_creates_run_concurrently_and_answer_in_the_order_asked() -> None:
    store = SlowMemoryStore()
    for n in range(0, 40, 3):
        store._create(f"k/{n:02d}", b"old")
    items = [(f"k/{n:02d}", f"new {n}".encode()) for n in range(40)]
    revisions = store._create_many(items)
    assert store.most_in_flight > 1  # the batch did not go one create at a time
    assert store.most_in_flight <= store.create_concurrency
    for n, rev in enumerate(revisions):
        found = store._read(f"k/{n:02d}")
        assert found is not None
        if n % 3 == 0:
            assert rev is None and found[0] == b"old"  # create-only: the old value stays
        else:
            assert found == (f"new {n}".encode(), rev)


def test_a_failed_create_drops_the_rest_and_raises_once_none_is_in_flight() -> None:
    store = SlowMemoryStore(fail_key="k/05")
    items = [(f"k/{n:02d}", b"v") for n in range(80)]
    with pytest.raises(StoreUnavailable):
        store._create_many(items)
    assert store.in_flight == 0  # nothing still writing once the caller sees the error
    written = {n for n in range(80) if store._read(f"k/{n:02d}") is not None}
    assert 5 not in written
    assert len(written) < 79  # an outage does not wait out a retry budget per create left


def test_a_backend_without_concurrency_creates_one_after_the_other() -> None:
    store = SlowMemoryStore()
    store.create_concurrency = 1
    assert store._create_many([(f"k/{n}", b"v") for n in range(5)]) == [
        store._read(f"k/{n}")[1]  # type: ignore[index]
        for n in range(5)
    ]
    assert store.most_in_flight == 1
