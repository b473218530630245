"""Rehearse a planned deployment: start the planned Cloud Run services with their planned
command and environment, somewhere other than Cloud Run.

:func:`planned_services` reads each ``google_cloud_run_v2_service`` of a plan (image,
command/args, env, secret env, port, startup probe); :func:`image_config` reads what the image
adds (its Dockerfile's ENV, ENTRYPOINT, CMD, WORKDIR), since Cloud Run runs the image's own
command when the plan sets none. A :class:`Launcher` says where the rehearsal runs: it opens
a :class:`Site` (the emulators standing in for Google's endpoints, a port and an address per
service) and starts each service: :class:`LocalProcessLauncher` as processes on this machine,
:class:`ContainerLauncher` as the planned images themselves in containers on one Docker network.
Both get the same planned command and environment (``tests/infra/test_rehearsal.py`` builds
them, with its listed substitutions).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from tests.fixtures.cloud_tasks import TasksEmulator, emulator_client
from tests.fixtures.servers import GcsServer, create_bucket, free_port, gcs_answers
from tests.infra.plan import Plan

ROOT = Path(__file__).resolve().parents[2]
# Which Dockerfile builds which image (cloudbuild.yaml: zpe-api, zpe-worker).
DOCKERFILES = {
    "zpe-api": ROOT / "services" / "api" / "Dockerfile",
    "zpe-worker": ROOT / "services" / "worker" / "Dockerfile",
}
# Generous on a loaded machine (a container's Python start-up waits for a CPU); the planned
# startup probe allows 30 x 2 s.
STARTUP_WAIT = 300.0


@dataclass(frozen=True)
class ImageConfig:
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    workdir: str


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    return lines


def image_config(dockerfile: Path) -> ImageConfig:
    """ENV, ENTRYPOINT, CMD and WORKDIR of the final stage of ``dockerfile``."""
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    cmd: list[str] = []
    workdir = "/"
    for line in _logical_lines(dockerfile.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            env, entrypoint, cmd, workdir = {}, [], [], "/"
        elif keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value.replace("$PATH", env.get("PATH", "$PATH"))
        elif keyword == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif keyword == "CMD":
            cmd = json.loads(rest)
        elif keyword == "WORKDIR":
            workdir = rest.strip()
    return ImageConfig(env, entrypoint, cmd, workdir)


@dataclass
class PlannedService:
    """One Cloud Run service as planned."""

    name: str
    image: str
    command: list[str] | None
    args: list[str] | None
    env: dict[str, str]  # plain values known at plan time
    secret_env: dict[str, str]  # env name -> Secret Manager secret id
    unknown_env: list[str]  # names whose value Google assigns at apply time
    container_port: int
    startup_path: str
    ingress: str  # INGRESS_TRAFFIC_ALL, ..._INTERNAL_ONLY, ..._INTERNAL_LOAD_BALANCER
    limits: dict[str, str]  # cpu ("1"), memory ("512Mi")

    @property
    def image_name(self) -> str:
        return self.image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]

    @property
    def reached_from_outside(self) -> bool:
        """Traffic from outside the project may reach it (the API; not the private worker)."""
        return self.ingress != "INGRESS_TRAFFIC_INTERNAL_ONLY"


def planned_services(plan: Plan) -> dict[str, PlannedService]:
    out = {}
    for res in plan.of_type("google_cloud_run_v2_service"):
        container = plan.container(res.address)
        env = plan.env(res.address)
        probe = container["startup_probe"][0]["http_get"][0]
        resources = container.get("resources") or [{}]
        out[res.values["name"]] = PlannedService(
            name=res.values["name"],
            image=container["image"],
            command=container.get("command") or None,
            args=container.get("args") or None,
            env={n: v.value for n, v in env.items() if v.value is not None and not v.unknown},
            secret_env={n: v.secret for n, v in env.items() if v.secret},
            unknown_env=[n for n, v in env.items() if v.unknown],
            container_port=container["ports"][0]["container_port"],
            startup_path=probe["path"],
            ingress=res.values["ingress"],
            limits=dict(resources[0].get("limits") or {}),
        )
    return out


@dataclass
class ServiceSpec:
    """What to start. ``env`` is a local process's complete environment (the image's ENV, the
    runtime, then ``container_env``; nothing is inherited); a container launcher runs
    ``image`` (the local build of the planned one) with ``container_env`` only, as Cloud Run
    would (the image brings its own ENV and user), ``argv`` as its command and ``limits``."""

    name: str
    image: str
    argv: list[str]
    env: dict[str, str]
    container_env: dict[str, str]
    port: int
    health_path: str
    workdir: Path
    reached_from_outside: bool = True
    limits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Site:
    """Where the services run, as the services themselves see it."""

    storage_emulator_host: str  # STORAGE_EMULATOR_HOST (fake-gcs-server)
    tasks_emulator_host: str | None  # ZPE_TASKS_EMULATOR_HOST (None: no queue in this mode)
    ports: dict[str, int]  # each service's PORT
    urls: dict[str, str]  # each service's base URL as the others call it (ZPE_WORKER_URL)
    # The test's own client of that emulator (it creates the queue, as Terraform would).
    tasks_client: Callable[[], Any] | None = None


class Running(Protocol):
    url: str  # the base URL from this test process ("" if only its neighbours reach it)

    def probe(self, path: str) -> bool:
        """GET ``path`` on the service answers 200."""
        ...

    def exited(self) -> str | None:
        """How it ended, or None while it runs."""
        ...

    def logs(self) -> str: ...

    def stop(self) -> None: ...


class Launcher(Protocol):
    # True: the services are containers (each listens on its own interfaces, reached through
    # published ports); False: processes sharing this machine's loopback.
    contained: bool

    def open_site(self, services: Sequence[PlannedService], *, bucket: str, tasks: bool) -> Site:
        """Start the emulators (the bucket made, the Tasks emulator if ``tasks``) and assign
        each service its port and address."""
        ...

    def start(self, spec: ServiceSpec) -> Running:
        """Start one service and wait until its startup probe path answers."""
        ...

    def engine_version(self, image: str) -> str:
        """The pw.x version label the worker that runs here reports (cloudbuild.yaml's
        ``qe-version`` step; a process: this machine's pw.x)."""
        ...


@dataclass
class LocalProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _stopped: bool = field(default=False)

    def probe(self, path: str) -> bool:
        try:
            # 5 s: a busy server answers late (as tests.fixtures.servers.wait_until_up)
            return httpx.get(self.url + path, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def exited(self) -> str | None:
        code = self.process.poll()
        return None if code is None else f"exited {code}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


class LocalProcessLauncher:
    """Runs ``spec.argv`` as a process of its own (session) with exactly ``spec.env``; the
    emulators are the test fixtures' (``gcs``: a fake-gcs-server with that bucket; ``tasks``:
    the Cloud Tasks emulator)."""

    contained = False

    def __init__(self, gcs: Callable[[str], GcsServer], tasks: Callable[[], TasksEmulator]) -> None:
        self._gcs = gcs
        self._tasks = tasks

    def open_site(self, services: Sequence[PlannedService], *, bucket: str, tasks: bool) -> Site:
        emulator = self._tasks() if tasks else None
        ports = {s.name: free_port() for s in services}
        return Site(
            storage_emulator_host=self._gcs(bucket).emulator_host,
            tasks_emulator_host=emulator.host if emulator else None,
            ports=ports,
            urls={name: f"http://127.0.0.1:{port}" for name, port in ports.items()},
            tasks_client=emulator.client if emulator else None,
        )

    def start(self, spec: ServiceSpec) -> Running:
        spec.workdir.mkdir(parents=True, exist_ok=True)
        log_path = spec.workdir / f"{spec.name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                spec.argv,
                env=spec.env,
                cwd=spec.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running = LocalProcess(f"http://127.0.0.1:{spec.port}", process, log_path)
        wait_healthy(running, spec.health_path)
        return running

    def engine_version(self, image: str) -> str:
        return local_engine_version()


def local_engine_version() -> str:
    """The version label this machine's pw.x gets (``zpe-worker qe-version``, as cloudbuild)."""
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "zpe-worker"), "qe-version", "--pw-command", "pw.x"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return proc.stdout.strip()


def wait_healthy(running: Running, path: str, timeout: float = STARTUP_WAIT) -> None:
    """Like the planned startup probe: GET ``path`` until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = running.exited()
        if ended is not None:
            raise AssertionError(f"{running.url or 'the service'} {ended}:\n{running.logs()}")
        if running.probe(path):
            return
        time.sleep(0.5)
    logs = running.logs()
    running.stop()
    raise AssertionError(f"{running.url}{path} never answered 200:\n{logs[-4000:]}")


# --- containers -------------------------------------------------------------------------

POD_IMAGE = "zpe-local/python:bookworm"  # any local image with `sleep`
GCS_IMAGE = GcsServer.image
TASKS_IMAGE = TasksEmulator.image
TASKS_PORT = 8123  # the emulator's, inside the pod
LABEL = "zpe.rehearsal"


def _bytes(quantity: str) -> int:
    """A Kubernetes quantity (``512Mi``, ``4Gi``, ``1G``) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


@dataclass
class Container:
    """One running service container (removed by ``stop``; its log kept in ``log_path``)."""

    url: str
    container: Any  # docker.models.containers.Container
    port: int  # its PORT inside the pod
    log_path: Path
    _stopped: bool = field(default=False)

    def probe(self, path: str) -> bool:
        if self.url:  # published on this machine's loopback: as a client reaches it
            try:
                return httpx.get(self.url + path, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False
        # Not published (private, like the worker): from inside, as Cloud Run's probe does.
        check = (
            "import sys, urllib.request; sys.exit(urllib.request.urlopen("
            f"'http://127.0.0.1:{self.port}{path}', timeout=4).status != 200)"
        )
        result = self.container.exec_run(["python", "-c", check])
        return bool(result.exit_code == 0)

    def exited(self) -> str | None:
        self.container.reload()
        state = self.container.attrs["State"]
        if state["Status"] in ("exited", "dead"):
            return f"exited {state['ExitCode']} (OOMKilled={state['OOMKilled']})"
        return None

    def logs(self) -> str:
        if self._stopped:
            return self.log_path.read_text(errors="replace")
        text: str = self.container.logs().decode(errors="replace")
        return text

    def stop(self) -> None:
        if self._stopped:
            return
        try:
            self.container.stop(timeout=20)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text(self.logs())
        finally:
            self._stopped = True
            self.container.remove(force=True)


class ContainerLauncher:
    """The planned images (built here by ``scripts/docker-images.sh``) in containers on one
    user-defined Docker network, run as Cloud Run runs them: the image's user, ENV and
    command, ``spec.container_env`` only, and the planned CPU and memory limits.

    On the network ``zpe-rehearsal-<id>``: fake-gcs-server, reached by its container name as
    the services reach Google's storage endpoint, and a pod, one network namespace (of a
    sleeping container, as in a Kubernetes pod) that the services and the Cloud Tasks
    emulator join. They share its loopback because the emulator cannot sign the OIDC token
    real Cloud Tasks sends, and the push secret standing in for it is accepted only next to
    an emulator on loopback, from loopback, by a worker listening on loopback
    (``zpe_core.dispatch.cloud_tasks.check_push_secret``, ``zpe_worker.serve``). Each service
    gets its own port in the pod (the planned container port if free); those reached from
    outside (planned ingress not internal-only) and the emulator are published on this
    machine's 127.0.0.1. Everything is removed by ``close``.
    """

    contained = True

    def __init__(self, workdir: Path, client: Any | None = None) -> None:
        import docker

        self.client = client or docker.from_env(timeout=120)
        self.id = uuid.uuid4().hex[:8]
        self.prefix = f"zpe-rehearsal-{self.id}"
        self.workdir = workdir
        self.network: Any = None
        self.pod: Any = None
        self._published: dict[int, int] = {}  # port in the pod -> port on 127.0.0.1
        self._helpers: list[Any] = []

    def _run(self, image: str, name: str, **kwargs: Any) -> Any:
        return self.client.containers.run(
            image, detach=True, name=f"{self.prefix}-{name}", labels={LABEL: self.id}, **kwargs
        )

    def open_site(self, services: Sequence[PlannedService], *, bucket: str, tasks: bool) -> Site:
        self.network = self.client.networks.create(
            self.prefix, driver="bridge", labels={LABEL: self.id}
        )
        storage_host = self._start_gcs(bucket)
        ports: dict[str, int] = {}
        for service in services:
            port = service.container_port
            while port in ports.values() or port == TASKS_PORT:
                port += 1
            ports[service.name] = port
        inside = [ports[s.name] for s in services if s.reached_from_outside]
        inside += [TASKS_PORT] if tasks else []
        self._published = {port: free_port() for port in inside}
        self.pod = self._run(
            POD_IMAGE,
            "pod",
            command=["sleep", "infinity"],
            network=self.network.name,
            ports={f"{p}/tcp": ("127.0.0.1", host) for p, host in self._published.items()},
        )
        self._helpers.append(self.pod)
        tasks_host = f"127.0.0.1:{TASKS_PORT}" if tasks else None
        tasks_client = None
        if tasks:
            self._helpers.append(
                self._run(
                    TASKS_IMAGE,
                    "tasks-emulator",
                    command=TasksEmulator.start_args(TASKS_PORT),
                    network_mode=f"container:{self.pod.id}",
                )
            )
            test_host = f"127.0.0.1:{self._published[TASKS_PORT]}"
            self._wait_for_tasks_emulator(test_host)

            def tasks_client() -> Any:
                return emulator_client(test_host)

        return Site(
            storage_emulator_host=storage_host,
            tasks_emulator_host=tasks_host,
            ports=ports,
            urls={name: f"http://127.0.0.1:{port}" for name, port in ports.items()},
            tasks_client=tasks_client,
        )

    def _start_gcs(self, bucket: str) -> str:
        name = f"{self.prefix}-storage"
        in_network = f"http://{name}:{GcsServer.container_port}"
        host_port = free_port()
        self._helpers.append(
            self._run(
                GCS_IMAGE,
                "storage",
                command=GcsServer.container_args(in_network),
                network=self.network.name,
                ports={f"{GcsServer.container_port}/tcp": ("127.0.0.1", host_port)},
            )
        )
        from_here = f"http://127.0.0.1:{host_port}"
        deadline = time.monotonic() + STARTUP_WAIT
        while not gcs_answers(from_here):
            assert time.monotonic() < deadline, f"fake-gcs-server: {self._helper_logs()}"
            time.sleep(0.5)
        create_bucket(from_here, bucket)  # as terraform would
        return in_network

    def _wait_for_tasks_emulator(self, host: str) -> None:
        # A published port accepts connections before the emulator listens: ask it something.
        client = emulator_client(host)
        deadline = time.monotonic() + STARTUP_WAIT
        while True:
            try:
                client.list_queues(request={"parent": "projects/p/locations/l"}, timeout=5)
                return
            except Exception as exc:  # unavailable while it starts
                assert time.monotonic() < deadline, f"Tasks emulator: {exc}\n{self._helper_logs()}"
                time.sleep(1)

    def start(self, spec: ServiceSpec) -> Running:
        assert self.pod is not None, "open_site first"
        kwargs: dict[str, Any] = {}
        if "memory" in spec.limits:
            kwargs["mem_limit"] = _bytes(spec.limits["memory"])
        if "cpu" in spec.limits:
            kwargs["nano_cpus"] = int(float(spec.limits["cpu"]) * 1e9)
        container = self._run(
            spec.image,
            spec.name,
            entrypoint=spec.argv,  # the planned command (Docker then ignores the image's CMD)
            environment=spec.container_env,
            network_mode=f"container:{self.pod.id}",
            **kwargs,
        )
        published = self._published.get(spec.port)
        running = Container(
            f"http://127.0.0.1:{published}" if published else "",
            container,
            spec.port,
            spec.workdir / f"{spec.name}.log",
        )
        try:
            wait_healthy(running, spec.health_path)
        except BaseException:
            running.stop()
            raise
        return running

    def engine_version(self, image: str) -> str:
        out: bytes = self.client.containers.run(
            image, ["zpe-worker", "qe-version", "--pw-command", "pw.x"], remove=True
        )
        return out.decode().strip()

    def _helper_logs(self) -> str:
        return "\n".join(
            f"--- {c.name}:\n{c.logs(tail=30).decode(errors='replace')}" for c in self._helpers
        )

    def close(self) -> None:
        """Remove every container and the network this launcher made."""
        for container in self.client.containers.list(
            all=True, filters={"label": f"{LABEL}={self.id}"}
        ):
            container.remove(force=True)
        if self.network is not None:
            self.network.remove()
