"""The two user commands for real: ``zpe serve`` in its own process, ``zpe submit --wait``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.servers import free_port, wait_until_up

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
ZPE = [sys.executable, "-m", "zpe_client.cli"]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "ZPE_STORE_URL": f"file://{tmp_path / 'store'}",
        "ZPE_DEFAULT_ENGINE": "mock",
        "ZPE_INPROCESS_CONCURRENCY": "2",
    }
    log = open(tmp_path / "api.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*ZPE, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/readyz", proc, log=tmp_path / "api.log")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def _zpe(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ZPE, "--api", url, *args], capture_output=True, text=True, timeout=120)


def test_submit_wait_prints_zpe_and_result_matches(api: str) -> None:
    done = _zpe(api, "submit", str(SAMPLES / "h2o_zpe.in"), "--wait")
    assert done.returncode == 0, done.stderr
    assert "ZPE = " in done.stdout
    assert "10 SCFs with symmetry (Pmm2 (25)), 19 without" in done.stderr
    job_id = done.stdout.split()[2]
    status = _zpe(api, "status", job_id)
    assert '"state": "done"' in status.stdout
    as_json = _zpe(api, "result", job_id, "--json")
    assert '"zpe_ev"' in as_json.stdout
    zpe_line = next(line for line in done.stdout.splitlines() if line.startswith("ZPE = "))
    assert zpe_line == _zpe(api, "result", job_id).stdout.splitlines()[0]
    # Water is non-linear: 9 modes, 6 excluded, 3 counted.
    counted = as_json.stdout.count('"counted": true')
    assert counted == 3


def test_thermochemistry_options_and_zpe_result_prints_it(api: str) -> None:
    done = _zpe(
        api,
        "submit",
        str(SAMPLES / "h2o_zpe.in"),
        "--engine",
        "mock",
        "--pressure",
        "200000",
        "--symmetry-number",
        "1",
        "--frequency-set",
        "projected",
        "--wait",
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.split()[2]
    result = json.loads(_zpe(api, "result", job_id, "--json").stdout)
    thermo = result["thermochemistry"]
    assert (thermo["pressure"], thermo["symmetry_number"]) == (200000.0, 1)
    assert result["frequency_set"] == "projected"
    printed = _zpe(api, "result", job_id).stdout
    assert f"G(298.15 K)       : {thermo['gibbs_energy_ev']:.6f} eV" in printed
    assert f"E_elec + ZPE      : {thermo['potential_energy_plus_zpe_ev']:.6f} eV" in printed
    assert "symmetry number 1 (request), p = 200000 Pa" in printed
    assert "frequency set: projected" in printed


def test_submit_of_bad_input_reports_the_error(api: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.in"
    bad.write_text("&control\n/\n")
    out = _zpe(api, "submit", str(bad))
    assert out.returncode == 1
    assert "missing_namelist" in out.stderr


def test_cli_reports_unreachable_api() -> None:
    out = _zpe("http://127.0.0.1:9", "status", "j00")
    assert out.returncode == 1
    assert "cannot reach the API" in out.stderr


def test_label_and_list(api: str) -> None:
    for name, label in [("h2_zpe.in", "hydrogen test"), ("h2o_zpe.in", "water, gas phase")]:
        out = _zpe(api, "submit", str(SAMPLES / name), "--label", label, "--wait")
        assert out.returncode == 0, out.stderr
    listed = _zpe(api, "list", "-q", "water")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 1, listed.stdout
    assert "done" in lines[0] and "H2 O" in lines[0] and "water, gas phase" in lines[0]
    assert "eV" in lines[0]
    everything = _zpe(api, "list").stdout.splitlines()
    assert len(everything) == 2 and "hydrogen test" in everything[0] + everything[1]
