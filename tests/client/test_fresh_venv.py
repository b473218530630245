"""Done means: a virtualenv with only ``libs/zpe_client`` installed has none of the
server's dependencies, and its ``zpe submit --wait`` and its Python API each finish a
mock job against a running ``zpe serve`` (started from the workspace's environment)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_or_skip
from tests.security._edge import server_process

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
#: Distributions the client must not pull in (the issue's list).
SERVER_ONLY = ("fastapi", "uvicorn", "redis", "google-", "grpc")


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``pip install libs/zpe_client`` (from uv's cache when offline)."""
    uv = shutil.which("uv")
    require_or_skip(uv is not None, "uv")
    assert uv is not None
    venv = tmp_path_factory.mktemp("client") / "venv"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    install = [uv, "pip", "install", "-q", "--python", str(python), str(ROOT / "libs/zpe_client")]
    if subprocess.run([*install, "--offline"], capture_output=True).returncode != 0:
        subprocess.run(install, check=True, timeout=300)
    return venv


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``zpe serve`` (the client's ``zpe``, deferring to the API) on a free port: file
    store, in-process workers, mock engine."""
    workdir = tmp_path_factory.mktemp("api")
    env = {
        "ZPE_STORE_URL": f"file://{workdir / 'store'}",
        "ZPE_DEFAULT_ENGINE": "mock",
        "ZPE_INPROCESS_CONCURRENCY": "2",
    }
    with server_process("zpe_client.cli", env, workdir / "api.log") as (port, _):
        yield f"http://127.0.0.1:{port}"


def _clean_env() -> dict[str, str]:
    """The environment without the workspace's venv or a developer's API settings."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "ZPE_API_URL", "ZPE_API_KEY")
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_the_client_venv_has_no_server_dependency(client_venv: Path) -> None:
    script = "import json, importlib.metadata as m; print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"  # noqa: E501
    out = subprocess.run(
        [str(client_venv / "bin" / "python"), "-c", script],
        capture_output=True, text=True, check=True, env=_clean_env(),
    )  # fmt: skip
    names = {n.lower() for n in json.loads(out.stdout)}
    assert "zpe-client" in names and {"httpx", "pydantic"} <= names
    assert not [n for n in names if n.startswith(SERVER_ONLY)], sorted(names)
    assert not names & {"zpe-core", "zpe-api", "zpe-worker", "ase", "numpy", "scipy"}


def test_zpe_submit_wait_from_the_client_venv(client_venv: Path, api_url: str) -> None:
    zpe = client_venv / "bin" / "zpe"
    done = subprocess.run(
        [str(zpe), "--api", api_url, "submit", str(SAMPLES / "h2o_zpe.in"), "--wait"],
        capture_output=True, text=True, timeout=300, env=_clean_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "10 SCFs with symmetry (Pmm2 (25)), 19 without" in done.stderr
    assert done.stdout.startswith("submitted job ") and "\nZPE = " in done.stdout
    assert "frequencies (cm^-1, counted and imaginary): " in done.stdout


def test_zpe_serve_says_the_api_is_not_installed(client_venv: Path) -> None:
    out = subprocess.run(
        [str(client_venv / "bin" / "zpe"), "serve", "--port", "9"],
        capture_output=True, text=True, timeout=60, env=_clean_env(),
    )  # fmt: skip
    assert out.returncode == 1
    assert "install zpe-api" in out.stderr


PYTHON_API = """
import json, sys
from zpe_client import Client
client = Client(sys.argv[1])
job = client.submit(sys.argv[2], engine="mock", label="from the python api")
status = job.wait(progress=True, timeout=300)
result = job.result()
print(json.dumps({"job_id": job.job_id, "state": status.state.value, "zpe_ev": result.zpe_ev,
                  "counted": len(result.frequencies_cm), "summary": status.summary.zpe_ev}))
"""


def test_the_python_api_from_the_client_venv(client_venv: Path, api_url: str) -> None:
    run = subprocess.run(
        [str(client_venv / "bin" / "python"), "-c", PYTHON_API, api_url,
         str(SAMPLES / "h2o_zpe.in")],
        capture_output=True, text=True, timeout=300, env=_clean_env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["state"] == "done" and out["counted"] == 3  # water: 9 modes, 6 rigid
    assert out["zpe_ev"] == pytest.approx(out["summary"])
    assert "tasks" in run.stderr  # the progress bar


def test_the_ase_extra_against_the_server(api_url: str) -> None:
    """An ``Atoms`` in, ``VibrationsData`` out (the workspace has the ``ase`` extra)."""
    from ase.build import molecule
    from ase.vibrations import VibrationsData

    from zpe_client import Client

    atoms = molecule("H2O")
    atoms.center(vacuum=4.0)
    with Client(api_url) as client:
        job = client.submit(
            atoms,
            engine="mock",
            input_data={"system": {"ecutwfc": 30.0, "ecutrho": 240.0}},
            pseudopotentials={"H": "H.pbe-kjpaw.UPF", "O": "O.pbe-kjpaw.UPF"},
        )
        job.wait(timeout=300)
        result = job.result()
        vib = result.vibrations  # fetched on first use, while the client is open
    assert isinstance(vib, VibrationsData)
    assert vib.get_atoms().get_chemical_symbols() == atoms.get_chemical_symbols()
    energies = vib.get_energies()
    assert len(energies) == 9
    assert 0.5 * sum(abs(e) for e in sorted(energies, key=abs)[6:]) == pytest.approx(
        result.zpe_ev, rel=0.05
    )
