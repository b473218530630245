"""Path-like ids (``.``, ``..``, hidden names) never address a record outside its directory.

Every id a caller can choose (a job id in a URL, a task id in a worker route, an
event id) ends up in a store key. On the file store a key is a path, so ``..``
as an id is a path traversal: ``events/../<name>`` is the file ``meta/<name>``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from zpe_core.errors import NotFound
from zpe_core.store.base import _safe_id
from zpe_core.store.file import FileJobStore

PATH_LIKE = [".", "..", "...", ".hidden", "a/b", "..%2f", "", "a\x00b", "ä", "x" * 201]


class Note(BaseModel):
    text: str


@pytest.mark.parametrize("value", PATH_LIKE)
def test_safe_id_refuses_path_like_ids(value: str) -> None:
    assert not _safe_id(value)


@pytest.mark.parametrize("value", ["j" + "0" * 32, "t" + "a" * 64, "result.json", "a-b_c.d"])
def test_safe_id_accepts_plain_ids(value: str) -> None:
    assert _safe_id(value)


def test_dot_dot_ids_cannot_reach_records_outside_their_directory(tmp_path: Path) -> None:
    store = FileJobStore(tmp_path / "store")
    # A record elsewhere in the store that a traversal would reach.
    store.create_document("servers/s0123456789abcdef", Note(text="server record"))
    secret = tmp_path / "store" / "meta" / "planted"
    secret.write_bytes(b"1\n{}")

    # Reads: an id of ".." names no record.
    assert store.get_task("..") is None
    assert store.get_job("..") is None
    assert store.get_job(".") is None
    assert store.get_artifact("..", "planted") is None
    assert store.get_document("events/../servers/s0123456789abcdef", Note) is None
    assert store.get_document("events/../planted", Note) is None

    # Writes: refused, and nothing appears outside the record's directory.
    before = {p for p in (tmp_path / "store").rglob("*") if ".locks" not in p.parts}
    with pytest.raises(NotFound):
        store.create_document("events/../s0-evt00001", Note(text="escaped"))
    with pytest.raises(NotFound):
        store.mutate_document("events/../planted", Note, lambda n: n)
    with pytest.raises(NotFound):
        store.mutate_task("..", lambda t: t)
    with pytest.raises(NotFound):
        store.put_artifact("..", "planted", b"overwritten")
    store.delete_document("events/../planted")
    after = {p for p in (tmp_path / "store").rglob("*") if ".locks" not in p.parts}
    assert after == before
    assert secret.read_bytes() == b"1\n{}"


def test_file_store_refuses_a_traversing_key_even_below_the_typed_operations(
    tmp_path: Path,
) -> None:
    """Defence in depth: the file backend's own primitives never leave the root."""
    store = FileJobStore(tmp_path / "store")
    (tmp_path / "outside").write_bytes(b"1\nsecret")
    assert store._read("../outside") is None
    with pytest.raises(NotFound):
        store._create("jobs/../../outside2", b"x")
    assert not (tmp_path / "outside2").exists()
    assert store._list("../") == []


def test_a_worker_cannot_write_an_event_record_outside_its_directory(tmp_path: Path) -> None:
    """``POST /compute/tasks/../failed`` would record the event at ``meta/<server>-<event>``."""
    from fastapi.testclient import TestClient

    from tests.api.test_pull_api import Server, pull_settings
    from zpe_api.main import create_app

    root = tmp_path / "store"
    with TestClient(create_app(pull_settings(store_url=f"file://{root}"))) as client:
        server = Server(client)
        before = sorted(p.name for p in (root / "meta").iterdir())
        for task_id in ("%2E%2E", "%2E", ".hidden"):
            body = {"epoch": 1, "lease_id": "x", "retryable": False, "code": "c", "reason": "r"}
            answer = server.post(f"/tasks/{task_id}/failed", body, event_id="evt-0000001")
            assert answer.status_code == 404, (task_id, answer.text)
        assert sorted(p.name for p in (root / "meta").iterdir()) == before
        assert not (root / "meta" / "events").exists() or not any(
            (root / "meta" / "events").iterdir()
        )
