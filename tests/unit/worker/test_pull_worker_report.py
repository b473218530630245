"""The pull worker's outcome posts: a 409 ``event_in_progress`` is retried, a stale lease is not.

Found by the chaos suite: after a store outage cut a result post, the API still held the
worker's first try of the event ("pending") and answered its retry 409
``event_in_progress``; the worker took that for a lost lease and dropped the result.
Outcomes are posted in batches (``/tasks/outcomes``), each item answered on its own, so
the same holds per item: one item in progress is posted again, its neighbours are not.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from zpe_client.compute import ResultBody
from zpe_client.http import ApiClient
from zpe_core.settings import Settings
from zpe_worker.pull import Credentials, PullWorker, _Outcome, _outcome_item, _Running

Answer = tuple[int, dict[str, tuple[int, str]]]  # request status, task id -> item status, code
RESULT = ResultBody(
    energy_ev=-1.0, forces_ev_per_a=[[0.0, 0.0, 0.0]], engine="mock", engine_version="m"
)


def worker(
    tmp_path: Path, answers: list[Answer]
) -> tuple[PullWorker, list[dict[str, dict[str, Any]]]]:
    token_file = tmp_path / "token.json"
    Credentials("http://api", "s0123", "zpe_worker_x_secret", 0.0, 4e9).save(token_file)
    pull = PullWorker(token_file, Settings(allowed_engines="mock"), api="http://api")
    pull._backoff = lambda failures: 0.01  # type: ignore[method-assign]
    posted: list[dict[str, dict[str, Any]]] = []  # per request: task id -> item

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/calc/zpe/compute/tasks/outcomes"
        items = json.loads(request.content)["outcomes"]
        posted.append({item["task_id"]: item for item in items})
        status, per_item = answers.pop(0)
        if status != 200:
            return httpx.Response(status, json={"code": "x", "detail": "x"})
        body = []
        for item in items:
            item_status, code = per_item[item["task_id"]]
            body.append({"task_id": item["task_id"], "status": item_status, "code": code})
        return httpx.Response(200, json={"items": body})

    pull.client = ApiClient("http://api", token="t", transport=httpx.MockTransport(handle))
    return pull, posted


def report(pull: PullWorker, *task_ids: str) -> list[str]:
    """Hold a slot for each task and report a result for each; the answers logged."""
    settled: list[str] = []
    original = pull._settle

    def settle(outcome: _Outcome, answer: str) -> None:
        settled.append(f"{outcome.task_id}:{answer}")
        original(outcome, answer)

    pull._settle = settle  # type: ignore[method-assign]
    outcomes = []
    for task_id in task_ids:
        pull._running[task_id] = _Running(task_id, 1, "l", threading.current_thread())
        item = _outcome_item(task_id, 1, "l", RESULT)
        outcomes.append(_Outcome(item, {}, 0.0, time.monotonic() + 60))
    with pull._lock:  # queued together, as when they finish while a post is in flight
        pull._outbox.extend(outcomes[1:])
    pull._report(outcomes[0])
    assert pull._running == {}, "every slot is freed once its outcome is settled"
    return settled


def test_event_in_progress_is_retried_with_the_same_event_id(tmp_path: Path) -> None:
    pull, posted = worker(
        tmp_path,
        [
            (200, {"t1": (409, "event_in_progress"), "t2": (200, "")}),
            (200, {"t1": (200, "")}),
        ],
    )
    assert sorted(report(pull, "t1", "t2")) == ["t1:ok", "t2:ok"]
    assert [sorted(p) for p in posted] == [["t1", "t2"], ["t1"]]
    assert posted[0]["t1"]["event_id"] == posted[1]["t1"]["event_id"]


def test_a_stale_lease_is_not_retried(tmp_path: Path) -> None:
    pull, posted = worker(tmp_path, [(200, {"t1": (409, "stale_lease"), "t2": (200, "")})])
    assert sorted(report(pull, "t1", "t2")) == ["t1:conflict", "t2:ok"]
    assert len(posted) == 1
    assert json.loads((tmp_path / "token.json").read_text())["server_id"] == "s0123"


def test_an_outage_retries_the_whole_batch_with_the_same_event_ids(tmp_path: Path) -> None:
    ok: dict[str, tuple[int, str]] = {"t1": (200, ""), "t2": (200, "")}
    pull, posted = worker(tmp_path, [(503, {}), (200, ok)])
    assert sorted(report(pull, "t1", "t2")) == ["t1:ok", "t2:ok"]
    assert len(posted) == 2 and posted[0] == posted[1]


def test_a_refused_result_is_reported_as_a_permanent_failure(tmp_path: Path) -> None:
    pull, posted = worker(
        tmp_path, [(200, {"t1": (422, "result_shape_mismatch")}), (200, {"t1": (200, "")})]
    )
    assert report(pull, "t1") == ["t1:invalid", "t1:ok"]
    assert "result" in posted[0]["t1"]
    failure = posted[1]["t1"]["failure"]
    assert failure["code"] == "result_refused" and failure["retryable"] is False
    assert posted[1]["t1"]["event_id"] != posted[0]["t1"]["event_id"]
