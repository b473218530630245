"""Rehearse the planned deployments with a real pw.x H2 job (``cloud-tasks`` and ``http-pull``).

The services are started from the plan terraform made of infra/terraform/examples/*.tfvars:
each container's image command (the plan sets none, so Cloud Run runs the image's
ENTRYPOINT + CMD) and exactly the planned environment. The only changes are listed in
:func:`substitutions`: Google's endpoints become emulators (fake-gcs-server for the bucket,
the Cloud Tasks emulator for the queue), the values Google assigns at apply time and the
secrets get local or test values, and Google-signed credentials a test secret. If the plan
leaves out something a service needs, the rehearsal fails; it adds nothing else.

Where they run is the ``launcher`` fixture's choice, by ``ZPE_TEST_SERVERS`` like the other
servers: ``local`` runs them as processes on this machine (:class:`LocalProcessLauncher`),
``docker`` runs the images themselves (``zpe-api:local``, ``zpe-worker:local`` from
``scripts/docker-images.sh``) with the Tasks emulator and fake-gcs-server in containers on
one Docker network (:class:`ContainerLauncher`); ``auto`` picks docker when an engine answers.
CI runs the cloud-tasks rehearsal both ways (``scripts/test.sh``, docs/testing.md).
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
from tests.fixtures.servers import GcsServer, docker_available, docker_image_present, server_runtime
from tests.infra.plan import Plan
from tests.infra.rehearsal import (
    DOCKERFILES,
    GCS_IMAGE,
    POD_IMAGE,
    ROOT,
    TASKS_IMAGE,
    ContainerLauncher,
    Launcher,
    LocalProcessLauncher,
    PlannedService,
    Running,
    ServiceSpec,
    Site,
    image_config,
    local_engine_version,
    planned_services,
    wait_healthy,
)

# 13 small SCFs: about a minute on an idle 2-core machine, far longer on a loaded one.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.pwx,
    pytest.mark.timeout(1800),
    # Before the (session-scoped, minutes-long) plans: a missing engine skips at once.
    pytest.mark.usefixtures("rehearsal_runtime"),
]

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
    runtime: dict[str, str]  # what Cloud Run and the image's OS provide (processes only)
    paths: dict[str, str]  # image path -> local path in ENV values (processes only)
    images: dict[str, str]  # planned image -> the image built here from its Dockerfile
    ports: dict[str, int]  # service -> PORT (Cloud Run gives each container its own)
    # The address a command listens on: Cloud Run routes to 0.0.0.0 in the container. The
    # worker takes the emulator's push secret, which zpe_worker.serve accepts on loopback
    # only, so it listens on 127.0.0.1 (the emulator shares its loopback). The API does too
    # as a local process (nothing off this machine should reach it); in a container it
    # listens as planned, reached through its published port.
    listen: dict[str, dict[str, str]]  # service -> {planned text: local text} in its command


def substitutions(
    services: dict[str, PlannedService], site: Site, launcher: Launcher, *, home: Path
) -> Substitutions:
    loopback = {"--host 0.0.0.0": "--host 127.0.0.1"}
    pushed_to = {"zpe-worker"} if site.tasks_emulator_host else set()
    return Substitutions(
        secrets={"zpe-admin-token": ADMIN_TOKEN},
        google_endpoints={
            "STORAGE_EMULATOR_HOST": site.storage_emulator_host,
            **(
                {"ZPE_TASKS_EMULATOR_HOST": site.tasks_emulator_host}
                if site.tasks_emulator_host
                else {}
            ),
        },
        # The worker's run.app URL is Google's; here the rehearsal's worker.
        assigned_by_google={"ZPE_WORKER_URL": site.urls["zpe-worker"]}
        if "zpe-worker" in services
        else {},
        # The emulator pushes without an OIDC token: API and worker share a push secret.
        credentials={"ZPE_PUSH_SHARED_SECRET": PUSH_SECRET} if site.tasks_emulator_host else {},
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
        # cloudbuild.yaml pushes these and Terraform pins their digests.
        images={s.image: f"{s.image_name}:local" for s in services.values()},
        ports=site.ports,
        listen={name: loopback for name in services if name in pushed_to or not launcher.contained},
    )


def service_spec(planned: PlannedService, subs: Substitutions, workdir: Path) -> ServiceSpec:
    """The planned container: image ENV < Cloud Run env < planned env (a process gets them
    all; a container gets ``container_env`` and its image brings the rest)."""
    image = image_config(DOCKERFILES[planned.image_name])
    if planned.command:  # Cloud Run semantics: command replaces ENTRYPOINT (and CMD)
        argv = planned.command + (planned.args or [])
    else:
        argv = image.entrypoint + (planned.args or image.cmd)
    for planned_text, local in subs.listen.get(planned.name, {}).items():
        argv = [arg.replace(planned_text, local) for arg in argv]
    # What Cloud Run gives the container: PORT (the container port; here the site's), then
    # the planned env, with secrets, Google-assigned values and endpoints substituted.
    port = subs.ports[planned.name]
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
        subs.images[planned.image],
        argv,
        env,
        container,
        port,
        planned.startup_path,
        workdir / planned.name,
        planned.reached_from_outside,
        planned.limits,
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


@pytest.fixture(scope="session")
def rehearsal_runtime() -> str:
    """``docker`` or ``local`` (``ZPE_TEST_SERVERS``), once what that needs is here."""
    runtime = server_runtime()
    if runtime == "docker":
        require_or_skip(docker_available(), "a Docker engine (scripts/docker-images.sh starts one)")
        for image in ("zpe-api:local", "zpe-worker:local", POD_IMAGE, GCS_IMAGE, TASKS_IMAGE):
            require_or_skip(docker_image_present(image), f"{image} (bash scripts/docker-images.sh)")
    else:
        require_or_skip(shutil.which("pw.x") is not None, "pw.x (apt-get install quantum-espresso)")
    return runtime


@pytest.fixture
def launcher(
    request: pytest.FixtureRequest, rehearsal_runtime: str, tmp_path: Path
) -> Iterator[Launcher]:
    """Where the planned services run: processes here, or their images in containers
    (``ZPE_TEST_SERVERS``: docker, or auto with an engine answering)."""
    if rehearsal_runtime == "docker":
        containers = ContainerLauncher(tmp_path / "logs")
        try:
            yield containers
        finally:
            containers.close()
        return
    gcs_for: Callable[[str], GcsServer] = request.getfixturevalue("gcs_for")
    yield LocalProcessLauncher(gcs_for, lambda: request.getfixturevalue("tasks_emulator"))


@pytest.fixture
def local_qe_version() -> str:
    """What this machine's pw.x reports (the http-pull rehearsal's pull worker runs here)."""
    require_or_skip(shutil.which("pw.x") is not None, "pw.x (apt-get install quantum-espresso)")
    return local_engine_version()


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
def gcs_for() -> Iterator[Callable[[str], GcsServer]]:
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


def _planned_qe_version(services: dict[str, PlannedService], reported: str) -> str:
    versions = {s.env.get("ZPE_QE_VERSION") for s in services.values()}
    assert len(versions) == 1, f"the services disagree on ZPE_QE_VERSION: {versions}"
    (version,) = versions
    assert version == reported, (
        f"planned ZPE_QE_VERSION {version} but the worker's pw.x is {reported}"
    )
    assert version is not None
    return version


# --- the rehearsals -------------------------------------------------------------------------


def test_cloud_tasks_deployment_computes_h2(
    plans: Callable[[str, str], Plan],
    launcher: Launcher,
    started: list[Running],
    tmp_path: Path,
) -> None:
    plan = plans(GOOGLE, "cloud-tasks")
    services = planned_services(plan)
    assert set(services) == {"zpe-api", "zpe-worker"}
    site = launcher.open_site(list(services.values()), bucket=planned_bucket(plan), tasks=True)
    subs = substitutions(services, site, launcher, home=tmp_path)
    worker_spec = service_spec(services["zpe-worker"], subs, tmp_path)
    qe_version = _planned_qe_version(services, launcher.engine_version(worker_spec.image))
    queue = services["zpe-api"].env["ZPE_TASKS_QUEUE"]
    parent = queue.rsplit("/queues/", 1)[0]
    assert site.tasks_client is not None
    try:  # terraform creates the queue; here in the emulator
        site.tasks_client().create_queue(request={"parent": parent, "queue": {"name": queue}})
    except Exception as exc:  # AlreadyExists from an earlier run in this session
        assert "exists" in str(exc).lower(), exc

    started.append(launcher.start(worker_spec))
    api = launcher.start(service_spec(services["zpe-api"], subs, tmp_path))
    started.append(api)
    wait_healthy(api, "/readyz")  # the smoke check of cloudbuild.yaml

    assert_anonymous_refused(api.url)
    result = run_h2_job(api.url, first_api_key(api.url))
    assert_h2_result(result, qe_version)


def test_http_pull_deployment_computes_h2_with_an_enrolled_pull_worker(
    plans: Callable[[str, str], Plan],
    launcher: Launcher,
    started: list[Running],
    local_qe_version: str,
    tmp_path: Path,
) -> None:
    plan = plans(GOOGLE, "http-pull")
    services = planned_services(plan)
    assert set(services) == {"zpe-api"}
    qe_version = _planned_qe_version(services, local_qe_version)
    site = launcher.open_site(list(services.values()), bucket=planned_bucket(plan), tasks=False)
    subs = substitutions(services, site, launcher, home=tmp_path)
    api = launcher.start(service_spec(services["zpe-api"], subs, tmp_path))
    started.append(api)
    wait_healthy(api, "/readyz")

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
