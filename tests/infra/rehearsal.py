"""Rehearse a planned deployment: start the planned Cloud Run services with their planned
command and environment, somewhere other than Cloud Run.

:func:`planned_services` reads each ``google_cloud_run_v2_service`` of a plan (image,
command/args, env, secret env, port, startup probe); :func:`image_config` reads what the image
adds (its Dockerfile's ENV, ENTRYPOINT, CMD, WORKDIR), since Cloud Run runs the image's own
command when the plan sets none. A :class:`Launcher` starts one service: here
:class:`LocalProcessLauncher` (a process on this machine); a container launcher would run the
planned image itself with the same environment.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from tests.infra.plan import Plan

ROOT = Path(__file__).resolve().parents[2]
# Which Dockerfile builds which image (cloudbuild.yaml: zpe-api, zpe-worker).
DOCKERFILES = {
    "zpe-api": ROOT / "services" / "api" / "Dockerfile",
    "zpe-worker": ROOT / "services" / "worker" / "Dockerfile",
}


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

    @property
    def image_name(self) -> str:
        return self.image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]


def planned_services(plan: Plan) -> dict[str, PlannedService]:
    out = {}
    for res in plan.of_type("google_cloud_run_v2_service"):
        container = plan.container(res.address)
        env = plan.env(res.address)
        probe = container["startup_probe"][0]["http_get"][0]
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
        )
    return out


@dataclass
class ServiceSpec:
    """What to start. ``env`` is a local process's complete environment (the image's ENV, the
    runtime, then ``container_env``; nothing is inherited); a container launcher runs
    ``image`` with ``container_env`` only, as Cloud Run would (the image brings its own ENV
    and command)."""

    name: str
    image: str
    argv: list[str]
    env: dict[str, str]
    container_env: dict[str, str]
    port: int
    health_path: str
    workdir: Path


class Running(Protocol):
    url: str

    def logs(self) -> str: ...

    def stop(self) -> None: ...


class Launcher(Protocol):
    def start(self, spec: ServiceSpec) -> Running: ...


@dataclass
class LocalProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _stopped: bool = field(default=False)

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
    """Runs ``spec.argv`` as a process of its own (session) with exactly ``spec.env``."""

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
        wait_healthy(running, spec.health_path, process)
        return running


def wait_healthy(
    running: Running, path: str, process: subprocess.Popen[bytes] | None, timeout: float = 120
) -> None:
    """Like the planned startup probe: GET ``path`` until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{running.url} exited {process.returncode}:\n{running.logs()}")
        try:
            if httpx.get(running.url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    running.stop()
    raise AssertionError(f"{running.url}{path} never answered 200:\n{running.logs()[-4000:]}")
