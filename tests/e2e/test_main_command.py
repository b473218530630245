"""The README's first command, ``bash scripts/run-h2.sh``, as a user runs it: a real pw.x
ZPE of H2 on the embedded defaults, printed, exit status 0, and no server left behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_or_skip
from tests.fixtures.servers import free_port

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.pwx, pytest.mark.slow]


def test_run_h2_prints_the_zpe_exits_0_and_stops_its_server(tmp_path: Path) -> None:
    require_or_skip(shutil.which("pw.x") is not None, "pw.x (apt-get install quantum-espresso)")
    require_or_skip(
        Path("/usr/share/espresso/pseudo/H.pbe-kjpaw.UPF").exists(),
        "H.pbe-kjpaw.UPF (apt-get install quantum-espresso-data)",
    )
    port = free_port()
    env = {
        **os.environ,
        "ZPE_PORT": str(port),
        "ZPE_STORE_URL": f"file://{tmp_path / 'store'}",  # not the user's .zpe-data store
    }
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "run-h2.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    zpe = re.search(r"^ZPE = (\d+\.\d+) eV", done.stdout, re.MULTILINE)
    assert zpe is not None, out[-3000:]
    # H2's one stretch at 4,300-4,400 cm^-1: half of h*nu is 0.26-0.28 eV.
    assert 0.25 < float(zpe.group(1)) < 0.29
    assert re.search(r"^E_elec \+ ZPE\s+: -\d+\.\d+ eV", done.stdout, re.MULTILINE)
    with pytest.raises(httpx.TransportError):  # the script stopped the server it started
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
