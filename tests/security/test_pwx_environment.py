"""pw.x gets a minimal environment (docs/security.md): no worker secret reaches it.

A pw.x input is a stranger's program in all but name; whatever pw.x can read, an input
bug or a malicious pseudopotential could leak. The worker's environment holds the store
URL, tokens and cloud credentials, so pw.x starts from an empty one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.security.conftest import fake_pw
from zpe_client.models import QeCalcSpec, TaskSpec
from zpe_core.engines.qe import QeEngine, subprocess_env
from zpe_core.errors import EngineError

SECRETS = {
    "ZPE_STORE_URL": "redis://:hunter2@store.internal:6379/0",
    "ZPE_ADMIN_TOKEN": "admin-secret-value",
    "ZPE_WORKER_TOKEN": "zpe_wt_abc_secretsecret",
    "GOOGLE_APPLICATION_CREDENTIALS": "/secrets/sa.json",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
}


def test_the_child_environment_is_built_from_an_allowlist(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OMPI_MCA_btl", "self,vader")
    env = subprocess_env(home=tmp_path)
    assert not set(SECRETS) & set(env)
    assert not any(value in env.values() for value in SECRETS.values())
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path)
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["OMPI_MCA_btl"] == "self,vader"  # MPI tuning of the worker still applies
    assert env["PATH"] == os.environ["PATH"]


def test_a_secret_in_the_worker_env_is_not_visible_to_pwx(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    dump = tmp_path / "env.txt"
    engine = QeEngine(
        fake_pw(tmp_path / "bin", f"env > {dump}\nexit 3"), str(tmp_path), 10.0, version="v"
    )
    spec = TaskSpec(
        engine="qe",
        engine_version="v",
        symbols=["H", "H"],
        positions=[[0, 0, 0], [0, 0, 0.75]],
        cell=[[6.0, 0, 0], [0, 6.0, 0], [0, 0, 6.0]],
        pbc=[True, True, True],
        qe=QeCalcSpec(
            input_data={"system": {"ecutwfc": 20.0}}, pseudopotentials={"H": "H.pbe-kjpaw.UPF"}
        ),
    )
    with pytest.raises(EngineError):
        engine.compute(spec, tmp_path / "work")
    seen = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert not [key for key in seen if key.startswith("ZPE_") or key in SECRETS]
    assert not [v for v in SECRETS.values() if v in dump.read_text()]
    assert seen["HOME"] == str((tmp_path / "work").resolve())
