"""The two Dockerfiles (hadolint in its own venv, plus what the issue requires of them) and
cloudbuild.yaml (parsed): both images built from their Dockerfiles, pushed tagged with the
commit, deployed by digest with terraform apply, and smoke-checked. No Docker engine runs
here, so the images themselves are not built by these tests."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import ROOT

API_DOCKERFILE = ROOT / "services" / "api" / "Dockerfile"
WORKER_DOCKERFILE = ROOT / "services" / "worker" / "Dockerfile"
QE = ("quantum-espresso", "pw.x", "mpirun", "openmpi")


def final_stage(path: Path) -> list[str]:
    """Instructions (continuation lines joined, comments dropped) of the last stage."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    last_from = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    return lines[last_from:]


@pytest.mark.parametrize("dockerfile", [API_DOCKERFILE, WORKER_DOCKERFILE], ids=["api", "worker"])
def test_hadolint(dockerfile: Path, hadolint_bin: Path) -> None:
    proc = subprocess.run(
        [str(hadolint_bin), "--format", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)


@pytest.mark.parametrize("dockerfile", [API_DOCKERFILE, WORKER_DOCKERFILE], ids=["api", "worker"])
def test_image_runs_as_non_root_with_healthcheck(dockerfile: Path) -> None:
    stage = final_stage(dockerfile)
    users = [ln.split()[1] for ln in stage if ln.upper().startswith("USER ")]
    assert users, f"{dockerfile}: no USER in the final stage"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile}: runs as {users[-1]}"
    assert any(ln.upper().startswith("HEALTHCHECK ") and "/healthz" in ln for ln in stage)
    cmd = [ln for ln in stage if ln.upper().startswith("CMD ")]
    assert cmd and "exec " in cmd[-1], (
        f"{dockerfile}: CMD must exec the server (SIGTERM reaches it)"
    )
    assert "${PORT" in cmd[-1], f"{dockerfile}: the server must listen on $PORT"


def test_api_image_has_no_quantum_espresso() -> None:
    text = API_DOCKERFILE.read_text()
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert not [w for w in QE if w in code], "the API image must not install QE or MPI"
    assert "--package zpe-api" in code and "zpe-worker" not in code
    assert "exec zpe serve" in code


def test_worker_image_has_debian_quantum_espresso() -> None:
    stage = " ".join(final_stage(WORKER_DOCKERFILE))
    for package in ("quantum-espresso", "quantum-espresso-data", "openmpi-bin"):
        assert re.search(rf"apt-get install .*\b{package}\b", stage), package
    assert "ZPE_PSEUDO_DIR=/usr/share/espresso/pseudo" in stage
    assert "OMPI_MCA_plm_rsh_agent=false" in stage
    assert "exec zpe-worker serve" in stage
    assert "--package zpe-worker" in WORKER_DOCKERFILE.read_text()


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[next(i for i, ln in enumerate(lines) if ln and not ln.startswith("#"))] == "**"
    assert "!uv.lock" in lines


# --- cloudbuild.yaml ------------------------------------------------------------------------


def _steps(cloudbuild: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["id"]: step for step in cloudbuild["steps"]}


def _text(step: dict[str, Any]) -> str:
    return " ".join(str(a) for a in step.get("args", []))


def test_cloudbuild_builds_both_dockerfiles_tagged_with_the_commit(
    cloudbuild: dict[str, Any],
) -> None:
    builds = [s for s in cloudbuild["steps"] if s.get("args", [None])[0] == "build"]
    files = {a.split("=", 1)[1] for s in builds for a in s["args"] if str(a).startswith("--file=")}
    assert files == {"services/api/Dockerfile", "services/worker/Dockerfile"}
    for step in builds:
        assert any(
            str(a).startswith("--tag=") and a.endswith(":${COMMIT_SHA}") for a in step["args"]
        ), step["id"]


def test_cloudbuild_pushes_and_records_digests(cloudbuild: dict[str, Any]) -> None:
    steps = _steps(cloudbuild)
    for name in ("api", "worker"):
        text = _text(steps[f"push-{name}"])
        assert "docker push" in text and "RepoDigests" in text, f"push-{name}"
        assert f"/workspace/{name}.image" in text and "@sha256:" in text


def test_cloudbuild_deploys_by_digest_with_terraform(cloudbuild: dict[str, Any]) -> None:
    step = _steps(cloudbuild)["terraform-apply"]
    text = _text(step)
    assert step["dir"] == "infra/terraform"
    assert "terraform apply" in text and "-auto-approve" in text
    assert '-var="api_image=$$(cat /workspace/api.image)"' in text
    assert '-var="worker_image=$$(cat /workspace/worker.image)"' in text
    assert set(step["waitFor"]) >= {"push-api", "push-worker"}


def test_cloudbuild_smoke_checks_healthz(cloudbuild: dict[str, Any]) -> None:
    step = _steps(cloudbuild)["smoke-healthz"]
    text = _text(step)
    assert step["waitFor"] == ["terraform-apply"]
    assert "/healthz" in text and "/readyz" in text and "curl -fsS" in text
    assert "exit 1" in text


def test_cloudbuild_has_no_inline_secrets(cloudbuild: dict[str, Any]) -> None:
    for key, value in cloudbuild.get("substitutions", {}).items():
        assert not re.search(r"token|secret|password|key", key, re.I), f"substitution {key}"
        assert not re.fullmatch(r"[A-Za-z0-9+/=_-]{24,}", str(value)), (
            f"substitution {key} looks like a secret"
        )
    assert "secretEnv" not in json.dumps(cloudbuild) or "availableSecrets" in cloudbuild
    # Shell variables must be escaped ($$name): a bare $name is a Cloud Build substitution.
    for step in cloudbuild["steps"]:
        bare = re.findall(r"(?<!\$)\$(?!\$|\{|[A-Z_]+\b)[a-z(]", _text(step))
        assert not bare, f"{step['id']}: unescaped shell $ ({bare})"
