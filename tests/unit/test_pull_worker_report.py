"""The pull worker's result post: a 409 ``event_in_progress`` is retried, a stale lease is not.

Found by the chaos suite: after a store outage cut a result post, the API still held the
worker's first try of the event ("pending") and answered its retry 409
``event_in_progress``; the worker took that for a lost lease and dropped the result.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from zpe_client.compute import ResultBody, ResultSubmission
from zpe_client.http import ApiClient
from zpe_core.settings import Settings
from zpe_worker.pull import Credentials, PullWorker


def worker(tmp_path: Path, answers: list[tuple[int, str]]) -> tuple[PullWorker, list[str]]:
    token_file = tmp_path / "token.json"
    Credentials("http://api", "s0123", "zpe_worker_x_secret", 0.0, 4e9).save(token_file)
    pull = PullWorker(token_file, Settings(allowed_engines="mock"), api="http://api")
    events: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        events.append(request.headers["X-Event-Id"])
        status, code = answers.pop(0)
        return httpx.Response(status, json={"code": code, "detail": code})

    pull.client = ApiClient("http://api", token="t", transport=httpx.MockTransport(handle))
    return pull, events


def submission() -> ResultSubmission:
    body = ResultBody(
        energy_ev=-1.0, forces_ev_per_a=[[0.0, 0.0, 0.0]], engine="mock", engine_version="m"
    )
    return ResultSubmission(epoch=1, lease_id="l", result=body)


def test_event_in_progress_is_retried_with_the_same_event_id(tmp_path: Path) -> None:
    pull, events = worker(tmp_path, [(409, "event_in_progress"), (200, "ok")])
    answer = pull._report("t1", "result", submission())
    assert answer == "ok"
    assert len(events) == 2 and events[0] == events[1]


def test_a_stale_lease_is_not_retried(tmp_path: Path) -> None:
    pull, events = worker(tmp_path, [(409, "stale_lease")])
    assert pull._report("t1", "result", submission()) == "conflict"
    assert len(events) == 1
    assert json.loads((tmp_path / "token.json").read_text())["server_id"] == "s0123"
