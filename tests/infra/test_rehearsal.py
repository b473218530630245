"""Rehearse the planned deployments with a real pw.x H2 job (``cloud-tasks`` and ``http-pull``).

The services are started from the plan terraform made of infra/terraform/examples/*.tfvars:
each container's image command (the plan sets none, so Cloud Run runs the image's
ENTRYPOINT + CMD) and exactly the planned environment. The only changes are listed in
:func:`substitutions`: Google's endpoints become emulators (fake-gcs-server for the bucket,
the Cloud Tasks emulator for the queue), the values Google assigns at apply time and the
secrets get local or test values, and Google-signed credentials a test secret. If the plan
leaves out something a service needs, the rehearsal fails; it adds nothing else.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require_or_skip
from tests.fixtures.cloud_tasks import TasksEmulator
from tests.fixtures.servers import GcsServer, free_port
from tests.infra.plan import Plan
from tests.infra.rehearsal import (
    DOCKERFILES,
    ROOT,
    Launcher,
    LocalProcessLauncher,
    PlannedService,
    Running,
    ServiceSpec,
    image_config,
    planned_services,
    wait_healthy,
)

# 13 small SCFs: about a minute on an idle 2-core machine, far longer on a loaded one.
pytestmark = [pytest.mark.slow, pytest.mark.pwx, pytest.mark.timeout(1800)]

GOOGLE = "6.50.0"
ADMIN_TOKEN = "rehearsal-admin-token-0123456789abcdef"
PUSH_SECRET = "rehearsal-push-secret-0123456789abcdef"
SAMPLE = ROOT / "samples" / "h2_zpe.in"


# --- everything the rehearsal changes in the planned deployment ------------------------------


@dataclass(frozen=True)
class Substitutions:
    secrets: dict[str, str]  # Secret Manager secret id -> test value
    google_endpoints: dict[str, str]  # env pointing Google's client libraries at emulators
    assigned_by_google: dict[str, str]  # env whose value Google assigns at apply time
    credentials: dict[str, str]  # env standing in for Google-signed OIDC tokens
    runtime: dict[str, str]  # what Cloud Run and the image's OS provide, on this machine
    paths: dict[str, str]  # image path -> local path (in ENV values)
    # The address the command listens on: Cloud Run routes to 0.0.0.0 in the container;
    # here a local process, reached (and reachable) on loopback only.
    listen: dict[str, str]


def substitutions(
    *, gcs: GcsServer, tasks: TasksEmulator | None, worker_url: str | None, home: Path
) -> Substitutions:
    return Substitutions(
        secrets={"zpe-admin-token": ADMIN_TOKEN},
        google_endpoints={
            "STORAGE_EMULATOR_HOST": gcs.emulator_host,
            **({"ZPE_TASKS_EMULATOR_HOST": tasks.host} if tasks else {}),
        },
        # The worker's run.app URL is Google's; here the local worker process.
        assigned_by_google={"ZPE_WORKER_URL": worker_url} if worker_url else {},
        # The emulator pushes without an OIDC token: API and worker share a push secret.
        credentials={"ZPE_PUSH_SHARED_SECRET": PUSH_SECRET} if tasks else {},
        runtime={
            "HOME": str(home),  # the image's /home/zpe
            # The image runs as uid 10001; here we may be root, which Open MPI refuses.
            "OMPI_ALLOW_RUN_AS_ROOT": "1",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        },
        paths={
            "/app/.venv/bin": str(ROOT / ".venv" / "bin"),  # the image's venv: this checkout's
            "$PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",  # python image's PATH
        },
        listen={"--host 0.0.0.0": "--host 127.0.0.1"},
    )


def service_spec(
    planned: PlannedService, subs: Substitutions, port: int, workdir: Path
) -> ServiceSpec:
    """The planned container as a process: image ENV < Cloud Run env < planned env."""
    image = image_config(DOCKERFILES[planned.image_name])
    if planned.command:  # Cloud Run semantics: command replaces ENTRYPOINT (and CMD)
        argv = planned.command + (planned.args or [])
    else:
        argv = image.entrypoint + (planned.args or image.cmd)
    for planned_text, local in subs.listen.items():
        argv = [arg.replace(planned_text, local) for arg in argv]
    # What Cloud Run gives the container: PORT (the container port; here a free one), then
    # the planned env, with secrets, Google-assigned values and endpoints substituted.
    container = {"PORT": str(port), **planned.env}
    for name, secret in planned.secret_env.items():
        assert secret in subs.secrets, f"{planned.name}: {name} reads unknown secret {secret}"
        container[name] = subs.secrets[secret]
    for name in planned.unknown_env:
        assert name in subs.assigned_by_google, f"{planned.name}: {name} is unknown in the plan"
        container[name] = subs.assigned_by_google[name]
    container.update(subs.google_endpoints)
    container.update(subs.credentials)
    env = {}
    for name, value in image.env.items():
        for image_path, local in subs.paths.items():
            value = value.replace(image_path, local)
        env[name] = value
    env.update(subs.runtime)
    env.update(container)
    return ServiceSpec(
        planned.name,
        planned.image,
        argv,
        env,
        container,
        port,
        planned.startup_path,
        workdir / planned.name,
    )


# --- the job ----------------------------------------------------------------------------


def h2_input() -> str:
    """The H2 sample at 25/200 Ry: 13 small SCFs."""
    text = SAMPLE.read_text()
    return text.replace("ecutwfc = 50.0", "ecutwfc = 25.0").replace(
        "ecutrho = 400.0", "ecutrho = 200.0"
    )


def first_api_key(api: str) -> str:
    response = httpx.post(
        f"{api}/calc/zpe/admin/api-keys",
        json={"owner": "platform-engineer", "label": "rehearsal"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


def run_h2_job(api: str, key: str, timeout: float = 1500) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api, headers=headers, timeout=30) as client:
        created = client.post("/calc/zpe/jobs", json={"input_text": h2_input(), "engine": "qe"})
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        deadline = time.monotonic() + timeout
        while True:
            status = client.get(f"/calc/zpe/jobs/{job_id}").json()
            if status["state"] in ("done", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, f"job did not finish: {status}"
            time.sleep(1)
        assert status["state"] == "done", status
        result: dict[str, Any] = client.get(f"/calc/zpe/jobs/{job_id}/result").json()
        return result


def assert_h2_result(result: dict[str, Any], qe_version: str) -> None:
    counted = [m["frequency_cm"] for m in result["modes"] if m["counted"]]
    assert len(counted) == 1 and 3500 <= counted[0] <= 4800, result["freqs_cm"]
    assert 0.2 <= result["zpe_ev"] <= 0.3, result["zpe_ev"]
    assert result["engine_version"] == qe_version


def assert_anonymous_refused(api: str) -> None:
    for method, path in (("GET", "/calc/zpe/jobs"), ("POST", "/calc/zpe/jobs")):
        response = httpx.request(method, api + path, json={}, timeout=30)
        assert response.status_code == 401, (method, path, response.status_code, response.text)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def launcher() -> Launcher:
    """How a planned service starts (a container launcher can replace it)."""
    return LocalProcessLauncher()


@pytest.fixture
def local_qe_version() -> str:
    require_or_skip(shutil.which("pw.x") is not None, "pw.x (apt-get install quantum-espresso)")
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "zpe-worker"), "qe-version", "--pw-command", "pw.x"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return proc.stdout.strip()


@pytest.fixture
def started() -> Iterator[list[Running]]:
    running: list[Running] = []
    yield running
    for service in reversed(running):
        service.stop()


def planned_bucket(plan: Plan) -> str:
    (bucket,) = plan.of_type("google_storage_bucket")
    name: str = bucket.values["name"]
    return name


@pytest.fixture
def gcs_for(tmp_path: Path) -> Iterator[Callable[[str], GcsServer]]:
    servers: list[GcsServer] = []

    def start(bucket: str) -> GcsServer:
        server = GcsServer(bucket=bucket)
        require_or_skip(server.available(), "fake-gcs-server")
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _planned_qe_version(services: dict[str, PlannedService], local: str) -> str:
    versions = {s.env.get("ZPE_QE_VERSION") for s in services.values()}
    assert len(versions) == 1, f"the services disagree on ZPE_QE_VERSION: {versions}"
    (version,) = versions
    assert version == local, f"planned ZPE_QE_VERSION {version} but this pw.x is {local}"
    assert version is not None
    return version


# --- the rehearsals -------------------------------------------------------------------------


def test_cloud_tasks_deployment_computes_h2(
    plans: Callable[[str, str], Plan],
    tasks_emulator: TasksEmulator,
    gcs_for: Callable[[str], GcsServer],
    launcher: Launcher,
    started: list[Running],
    local_qe_version: str,
    tmp_path: Path,
) -> None:
    plan = plans(GOOGLE, "cloud-tasks")
    services = planned_services(plan)
    assert set(services) == {"zpe-api", "zpe-worker"}
    qe_version = _planned_qe_version(services, local_qe_version)
    gcs = gcs_for(planned_bucket(plan))
    queue = services["zpe-api"].env["ZPE_TASKS_QUEUE"]
    parent = queue.rsplit("/queues/", 1)[0]
    try:  # terraform creates the queue; here in the emulator
        tasks_emulator.client().create_queue(request={"parent": parent, "queue": {"name": queue}})
    except Exception as exc:  # AlreadyExists from an earlier run in this session
        assert "exists" in str(exc).lower(), exc

    worker_port = free_port()
    worker_url = f"http://127.0.0.1:{worker_port}"
    subs = substitutions(gcs=gcs, tasks=tasks_emulator, worker_url=worker_url, home=tmp_path)
    started.append(
        launcher.start(service_spec(services["zpe-worker"], subs, worker_port, tmp_path))
    )
    api_spec = service_spec(services["zpe-api"], subs, free_port(), tmp_path)
    api = launcher.start(api_spec)
    started.append(api)
    wait_healthy(api, "/readyz", None)  # the smoke check of cloudbuild.yaml

    assert_anonymous_refused(api.url)
    result = run_h2_job(api.url, first_api_key(api.url))
    assert_h2_result(result, qe_version)


def test_http_pull_deployment_computes_h2_with_an_enrolled_pull_worker(
    plans: Callable[[str, str], Plan],
    gcs_for: Callable[[str], GcsServer],
    launcher: Launcher,
    started: list[Running],
    local_qe_version: str,
    tmp_path: Path,
) -> None:
    plan = plans(GOOGLE, "http-pull")
    services = planned_services(plan)
    assert set(services) == {"zpe-api"}
    qe_version = _planned_qe_version(services, local_qe_version)
    gcs = gcs_for(planned_bucket(plan))
    subs = substitutions(gcs=gcs, tasks=None, worker_url=None, home=tmp_path)
    api = launcher.start(service_spec(services["zpe-api"], subs, free_port(), tmp_path))
    started.append(api)
    wait_healthy(api, "/readyz", None)

    assert_anonymous_refused(api.url)
    key = first_api_key(api.url)
    # docs/pull-workers.md: the admin issues an enroll token, the server enrolls and pulls.
    enroll = httpx.post(
        f"{api.url}/calc/zpe/compute/enroll-tokens",
        json={"note": "rehearsal"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    )
    assert enroll.status_code == 201, enroll.text
    home = tmp_path / "pull-worker"
    home.mkdir()
    log = (home / "pull.log").open("wb")
    pull = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "zpe-worker"), "pull", "--api", api.url,
         "--token-file", str(home / "worker-token.json"), "--name", "rehearsal",
         "--engines", "qe", "--poll-wait", "2", "--idle-max", "0.5"],
        env={
            "PATH": f"{ROOT / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "ZPE_ENROLL_TOKEN": enroll.json()["token"],
            "OMPI_ALLOW_RUN_AS_ROOT": "1",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OMP_NUM_THREADS": "1",
        },
        cwd=home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        result = run_h2_job(api.url, key)
    finally:
        pull.terminate()
        try:
            pull.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pull.kill()
        log.close()
    assert_h2_result(result, qe_version)
