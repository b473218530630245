"""A pull worker reports every failure and frees its slot; a token file names its API.

Both seen while measuring: a missing scratch directory raised outside the
engine's ``try``, the task thread died, its slot was never freed and nothing was
posted back; and a worker started with ``--enroll-token`` silently used an old token
file of another API from the default location.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from zpe_client.compute import LeaseGranted
from zpe_client.http import ApiClient
from zpe_client.models import TaskSpec
from zpe_core.errors import EngineError
from zpe_core.jobs.compute import compute_task
from zpe_core.settings import Settings
from zpe_worker.pull import Credentials, PullWorker, TokenFileMismatch, must_enroll

H2 = TaskSpec(
    engine="mock",
    engine_version="",
    symbols=["H", "H"],
    positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]],
    cell=[[8.0, 0, 0], [0, 8.0, 0], [0, 0, 8.0]],
    pbc=[False, False, False],
)


def mock_spec(settings: Settings) -> TaskSpec:
    from zpe_core.engines import get_engine

    return H2.model_copy(update={"engine_version": get_engine("mock", settings).version()})


def test_missing_scratch_dir_is_an_engine_error(tmp_path: Path) -> None:
    settings = Settings(allowed_engines="mock", scratch_dir=str(tmp_path / "gone"))
    with pytest.raises(EngineError) as caught:
        compute_task(mock_spec(settings), settings, task_id="t" * 64)
    assert caught.value.retryable
    assert "gone" in caught.value.message


def pull_worker(
    tmp_path: Path, settings: Settings, leases: list[dict[str, object]] | None = None
) -> tuple[PullWorker, list[dict[str, object]]]:
    """A worker whose API answers ``leases`` to a lease request and records its outcomes."""
    token_file = tmp_path / "token.json"
    Credentials("http://api", "s0123", "zpe_worker_x_secret", 0.0, 4e9).save(token_file)
    worker = PullWorker(token_file, settings, api="http://api")
    posts: list[dict[str, object]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/heartbeats"):
            return httpx.Response(200, json={"items": []})
        if request.url.path.endswith("/tasks/leases"):
            return httpx.Response(200, json={"leases": leases or [], "batch_max": 16})
        assert request.url.path == "/calc/zpe/compute/tasks/outcomes", request.url.path
        items = json.loads(request.content)["outcomes"]
        posts.extend(items)
        answers = [{"task_id": item["task_id"], "status": 200, "answer": {}} for item in items]
        return httpx.Response(200, json={"items": answers})

    worker.client = ApiClient("http://api", token="t", transport=httpx.MockTransport(handle))
    return worker, posts


def grant(spec: object) -> dict[str, object]:
    """A lease grant as the API answers it."""
    return {
        "expires_at": 4e9,
        "task_id": "a" * 64,
        "epoch": 1,
        "lease_id": "l1",
        "spec": spec,
        "heartbeat_seconds": 20,
        "lease_seconds": 120,
        "job_ids": ["j1"],
    }


def test_any_error_is_reported_and_frees_the_slot(tmp_path: Path) -> None:
    spec = mock_spec(Settings(allowed_engines="mock")).model_dump(mode="json")
    settings = Settings(allowed_engines="mock", scratch_dir=str(tmp_path / "gone"))
    worker, posts = pull_worker(tmp_path, settings)
    worker._start(LeaseGranted.model_validate(grant(spec)))
    worker._drain()
    assert worker._running == {}, "the slot was not freed"
    assert worker.finished == 1
    failed = [p for p in posts if "failure" in p]
    assert len(failed) == 1, posts
    assert failed[0]["failure"]["retryable"] is True  # type: ignore[index]
    assert failed[0]["epoch"] == 1 and failed[0]["lease_id"] == "l1"


def test_an_unreadable_grant_is_reported_not_held(tmp_path: Path) -> None:
    settings = Settings(allowed_engines="mock")
    good = dict(grant(mock_spec(settings).model_dump(mode="json")), task_id="b" * 64)
    bad = grant({"engine": "mock", "symbols": "not a list"})
    worker, posts = pull_worker(tmp_path, settings, leases=[bad, good])
    granted = worker._lease(2)
    assert [g.task_id for g in granted] == ["b" * 64]  # the readable one is run
    assert worker._running == {}
    failed = [p for p in posts if "failure" in p]
    assert len(failed) == 1, posts
    assert failed[0]["task_id"] == "a" * 64
    assert failed[0]["failure"]["retryable"] is True  # type: ignore[index]
    assert failed[0]["epoch"] == 1 and failed[0]["lease_id"] == "l1"


def saved(tmp_path: Path, api: str, enroll_token: str) -> Path:
    from zpe_core.edge.tokens import token_digest

    path = tmp_path / "worker-token.json"
    Credentials(api, "s1", "zpe_worker_s1_x", 0.0, 4e9, token_digest(enroll_token)).save(path)
    return path


def test_a_missing_token_file_means_enroll(tmp_path: Path) -> None:
    assert must_enroll(tmp_path / "none.json", None, "zpe_enroll_a")


def test_the_same_enroll_token_reuses_the_file(tmp_path: Path) -> None:
    path = saved(tmp_path, "https://api-a", "zpe_enroll_a")
    assert not must_enroll(path, "https://api-a/", "zpe_enroll_a")
    assert not must_enroll(path, None, None)


def test_a_new_enroll_token_wins_over_an_old_file(tmp_path: Path) -> None:
    path = saved(tmp_path, "https://api-a", "zpe_enroll_a")
    assert must_enroll(path, None, "zpe_enroll_b")
    assert must_enroll(path, "https://api-b", "zpe_enroll_b")


def test_a_file_of_another_api_is_never_used_silently(tmp_path: Path) -> None:
    path = saved(tmp_path, "https://api-a", "zpe_enroll_a")
    with pytest.raises(TokenFileMismatch, match="api-a"):
        must_enroll(path, "https://api-b", None)


def test_an_old_file_without_digest_yields_to_an_enroll_token(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    Credentials("https://api-a", "s1", "zpe_worker_s1_x", 0.0, 4e9).save(path)
    assert must_enroll(path, None, "zpe_enroll_a")
    assert not must_enroll(path, None, None)


def test_pull_command_refuses_a_token_file_of_another_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from zpe_worker.cli import main

    path = saved(tmp_path, "https://api-a", "zpe_enroll_a")
    code = main(["pull", "--api", "https://api-b", "--token-file", str(path), "--once"])
    assert code == 2
    assert "https://api-a" in capsys.readouterr().err


def test_a_result_that_is_not_finite_is_a_permanent_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked on the worker against the wire model, as the API would refuse it."""
    from zpe_client.models import TaskResult

    def nan_result(*args: object, **kwargs: object) -> TaskResult:
        return TaskResult(
            energy_ev=float("nan"),
            forces_ev_per_a=[[0.0, 0.0, 0.0]] * 2,
            engine="mock",
            engine_version="m",
        )

    monkeypatch.setattr("zpe_worker.pull.compute_task", nan_result)
    settings = Settings(allowed_engines="mock")
    worker, posts = pull_worker(tmp_path, settings)
    worker._start(LeaseGranted.model_validate(grant(mock_spec(settings).model_dump(mode="json"))))
    worker._drain()
    assert [(p["task_id"], "result" in p) for p in posts] == [("a" * 64, False)]
    failure = posts[0]["failure"]
    assert failure["retryable"] is False and failure["code"] == "result_refused"  # type: ignore[index]
