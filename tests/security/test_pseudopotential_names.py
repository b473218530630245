"""A pseudopotential name that is a directory, a FIFO or a path (docs/security.md).

Before: a directory answered 500 (``IsADirectoryError`` while hashing it for the key)
and a FIFO hung the request (``open`` blocks until a writer comes). Now: 422 at submit
time, and a permanent engine error on a worker that finds one (never a hang, never a
retry loop).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import make_settings
from tests.security.conftest import fake_pw, h2_input
from zpe_api.main import create_app
from zpe_client.models import QeCalcSpec, TaskSpec
from zpe_core.engines.qe import QeEngine
from zpe_core.errors import EngineError
from zpe_core.jobs.compute import compute_task
from zpe_core.settings import Settings


@pytest.fixture
def pseudo_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pseudo"
    directory.mkdir()
    (directory / "H.pbe-kjpaw.UPF").write_text("<UPF/>\n")
    (directory / "H.dir.UPF").mkdir()
    os.mkfifo(directory / "H.fifo.UPF")
    return directory


@pytest.fixture
def qe_client(pseudo_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(
        default_engine="qe",
        qe_version="qe-test",
        pseudo_dir=str(pseudo_dir),
        execution_mode="http-pull",
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["H.dir.UPF", "H.fifo.UPF"])
def test_a_directory_or_fifo_answers_422_at_submit(qe_client: TestClient, name: str) -> None:
    answer = qe_client.post("/calc/zpe/jobs", json={"input_text": h2_input(pseudo=name)})
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "bad_pseudopotential"
    assert name in answer.json()["detail"]


@pytest.mark.parametrize("name", ["../pseudo/H.pbe-kjpaw.UPF", "/etc/passwd", ".hidden", "a\\b"])
def test_a_path_answers_422(qe_client: TestClient, name: str) -> None:
    answer = qe_client.post("/calc/zpe/jobs", json={"input_text": h2_input(pseudo=name)})
    assert answer.status_code == 422
    assert answer.json()["code"] == "bad_card"
    assert "plain file name" in answer.json()["detail"]


def _spec(name: str) -> TaskSpec:
    return TaskSpec(
        engine="qe",
        engine_version="qe-test",
        symbols=["H", "H"],
        positions=[[3, 3, 2.625], [3, 3, 3.375]],
        cell=[[6.0, 0, 0], [0, 6.0, 0], [0, 0, 6.0]],
        pbc=[True, True, True],
        # The planner could not see the files (a split control plane): no digest.
        qe=QeCalcSpec(
            input_data={"system": {"ecutwfc": 20.0}},
            pseudopotentials={"H": name},
            pseudo_digests={"H": None},
        ),
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["H.dir.UPF", "H.fifo.UPF"])
def test_a_worker_fails_such_a_task_for_good(pseudo_dir: Path, tmp_path: Path, name: str) -> None:
    # The fake pw.x reads its pseudopotential like pw.x would: a FIFO blocks it.
    pw = fake_pw(tmp_path / "bin", f"cat {pseudo_dir}/{name} >/dev/null; exit 3")
    engine = QeEngine(pw, str(pseudo_dir), 30.0, version="qe-test")
    with pytest.raises(EngineError) as info:
        engine.compute(_spec(name), tmp_path / "work")
    assert (info.value.code, info.value.retryable) == ("bad_pseudopotential", False)


def test_a_worker_refuses_a_path_in_a_stored_spec(pseudo_dir: Path, tmp_path: Path) -> None:
    settings = Settings(
        pw_command="pw.x",
        qe_version="qe-test",
        pseudo_dir=str(pseudo_dir),
        warm_start=False,
        scratch_dir=str(tmp_path),
    )
    with pytest.raises(EngineError) as info:
        compute_task(_spec("../../etc/passwd"), settings)
    assert (info.value.code, info.value.retryable) == ("task_spec_refused", False)
