"""The product images as built (``bash scripts/docker-images.sh``: zpe-api:local and
zpe-worker:local from the real Dockerfiles on local bases), checked for what a platform
engineer relies on. Without a Docker engine or the images these skip; with CI=true they fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_or_skip
from tests.fixtures.servers import docker_available, docker_image_present, free_port
from tests.infra.conftest import ROOT

API_IMAGE = "zpe-api:local"
WORKER_IMAGE = "zpe-worker:local"
QE_VERSION_FILE = "/etc/zpe/qe-version"  # the contract with deploys: docs/deploy.md, "Images"
H2_INPUT = ROOT / "samples" / "h2_zpe.in"
# What the API image must not contain, as a shell probe printing whatever it finds.
PW_PROBE = (
    "command -v pw.x mpirun; ls -d /usr/share/espresso 2>/dev/null; "
    "find / -xdev \\( -iname '*.upf' -o -name 'pw.x' \\) 2>/dev/null; true"
)

pytestmark = pytest.mark.slow


def _client() -> Any:
    import docker

    return docker.from_env(timeout=120)


@pytest.fixture(scope="module")
def images() -> None:
    require_or_skip(docker_available(), "a Docker engine (scripts/docker-images.sh starts one)")
    for image in (API_IMAGE, WORKER_IMAGE):
        require_or_skip(docker_image_present(image), f"{image} (bash scripts/docker-images.sh)")


def run(image: str, command: str, **kwargs: Any) -> str:
    """Run ``sh -c command`` in a throw-away container of ``image`` (its own user); stdout."""
    out: bytes = _client().containers.run(
        image, ["sh", "-c", command], entrypoint=[], remove=True, stderr=True, **kwargs
    )
    return out.decode(errors="replace")


@pytest.mark.parametrize(
    ("image", "has_qe"), [(API_IMAGE, False), (WORKER_IMAGE, True)], ids=["api", "worker"]
)
def test_only_the_worker_image_has_pw_x_and_pseudopotentials(
    images: None, image: str, has_qe: bool
) -> None:
    found = run(image, PW_PROBE).split()
    if has_qe:  # the probe does find them where they are
        assert any(p.endswith("/pw.x") for p in found), found
        assert any(p.lower().endswith(".upf") for p in found), found
    else:
        assert found == [], f"{image} contains {found}"


@pytest.mark.parametrize("image", [API_IMAGE, WORKER_IMAGE], ids=["api", "worker"])
def test_image_runs_as_a_non_root_user(images: None, image: str) -> None:
    config_user = _client().images.get(image).attrs["Config"]["User"]
    assert config_user and config_user.split(":")[0] not in ("root", "0"), config_user
    uid = run(image, "id -u").strip()
    assert uid.isdigit() and int(uid) != 0, uid


@pytest.fixture
def api_container(images: None) -> Iterator[str]:
    """zpe-api:local serving on a loopback port (its own CMD and $PORT); yields its URL.

    With API keys required, as Terraform deploys it: the image's own default (no auth)
    on 0.0.0.0 refuses to start (see the test below)."""
    port = free_port()
    container = _client().containers.run(
        API_IMAGE,
        detach=True,
        ports={"8080/tcp": ("127.0.0.1", port)},
        environment={"ZPE_AUTH_MODE": "api-keys"},
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        container.remove(force=True)


def test_api_image_answers_healthz(api_container: str) -> None:
    deadline = time.monotonic() + 90
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api_container}/healthz", timeout=3) as resp:
                assert resp.status == 200
                return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
            time.sleep(0.5)
    pytest.fail(f"/healthz did not answer within 90 s: {last}")


def test_api_image_refuses_anonymous_access_on_the_network(images: None) -> None:
    """Without an auth mode the API would serve everyone as one user: it must not start."""
    container = _client().containers.run(API_IMAGE, detach=True)
    try:
        result = container.wait(timeout=120)
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert result["StatusCode"] != 0, logs
    assert "ZPE_AUTH_MODE" in logs and "0.0.0.0" in logs, logs


def total_energy(pw_output: str) -> float:
    """The converged SCF energy (Ry) of a pw.x output."""
    assert "convergence has been achieved" in pw_output, pw_output[-3000:]
    match = re.search(r"^!\s+total energy\s+=\s+(-?\d+\.\d+) Ry", pw_output, re.M)
    assert match, pw_output[-3000:]
    return float(match.group(1))


@pytest.mark.pwx
def test_worker_image_pw_x_runs_an_h2_scf(images: None, tmp_path: Path) -> None:
    """The image's own command ($ZPE_PW_COMMAND: mpirun -np 2 pw.x, as its user) converges,
    to the energy the host's pw.x gives for the same input."""
    work = tmp_path / "work"
    work.mkdir(mode=0o777)
    work.chmod(0o777)  # the container's user (uid 10001) writes outdir here
    # The sample at lower cutoffs: same physics for both runs, a fraction of the time.
    text = re.sub(r"ecutwfc\s*=\s*[\d.]+", "ecutwfc = 25.0", H2_INPUT.read_text())
    text = re.sub(r"ecutrho\s*=\s*[\d.]+", "ecutrho = 200.0", text)
    assert "ecutwfc = 25.0" in text and "ecutrho = 200.0" in text
    (work / "h2.in").write_text(text)
    out = run(
        WORKER_IMAGE,
        "$ZPE_PW_COMMAND -in h2.in",
        volumes={str(work): {"bind": "/work", "mode": "rw"}},
        working_dir="/work",
    )
    energy = total_energy(out)
    host_pw = shutil.which("pw.x")
    require_or_skip(host_pw is not None, "pw.x on the host (the reference run)")
    assert host_pw is not None
    ref = tmp_path / "ref"
    ref.mkdir()
    proc = subprocess.run(
        [host_pw, "-in", str(work / "h2.in")],
        cwd=ref,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert abs(energy - total_energy(proc.stdout)) < 1e-6, (energy, proc.stdout[-2000:])


@pytest.mark.pwx
def test_worker_image_records_the_qe_version_its_worker_reports(images: None) -> None:
    """The file deploys read for the API's ZPE_QE_VERSION is the version the worker in this
    image puts in its task results (its own pw.x through its own $ZPE_PW_COMMAND)."""
    recorded = run(WORKER_IMAGE, f"cat {QE_VERSION_FILE}").strip()
    reported = run(
        WORKER_IMAGE,
        "python -c 'from zpe_core.engines import get_engine; from zpe_core.settings import "
        'Settings; print(get_engine("qe", Settings()).version())\'',
    ).strip()
    assert re.fullmatch(r"qe-\d+\.\d+\S*", recorded), recorded
    assert recorded == reported.splitlines()[-1], (recorded, reported)
