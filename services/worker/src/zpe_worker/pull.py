"""The pull worker: a compute server behind NAT that leases tasks over HTTPS.

``enroll`` trades a single-use enroll token for a worker token, kept in a file
only this user can read (0600). ``PullWorker.run`` then loops: renew the
token when two thirds of its life are gone, long-poll for a lease, run the
task with the local engine (``zpe_core.jobs.compute.compute_task``) while a
heartbeat thread extends the lease, and post the result or the failure under
the lease's epoch with a fresh event id (a retried post is answered the same).

* A heartbeat answered 409 means the lease moved on: the task is abandoned
  and its result never posted.
* Network errors and 5xx answers back off exponentially with jitter.
* SIGTERM/SIGINT: stop leasing, let running tasks finish for up to
  ``grace_seconds``, release what is still running, exit. A second signal
  releases at once.
* A 401 (token forged, expired or revoked) stops the worker: exit code 3.

The worker never holds store credentials; it only speaks to the API, through the
client package's ``ApiClient`` and wire models (``zpe_client.compute``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from pydantic import ValidationError

from zpe_client.compute import (
    Capabilities,
    FailureReport,
    LeaseGranted,
    LeaseRef,
    LeaseRequest,
    ResultBody,
    ResultSubmission,
    ServerEnrolled,
    ServerRegistration,
    TokenRenewed,
)
from zpe_client.http import ApiClient, ApiError, problem_code
from zpe_client.models import TaskSpec
from zpe_core.edge.tokens import digest_matches, token_digest
from zpe_core.engines import get_engine
from zpe_core.errors import EngineError, ZpeError
from zpe_core.jobs.compute import compute_task
from zpe_core.jobs.models import now
from zpe_core.settings import ComputeSettings, PullWorkerSettings

log = logging.getLogger("zpe.worker.pull")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_TOKEN_REJECTED = 3


def default_token_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "zpe" / "worker-token.json"


class TokenRejected(ApiError):
    """401/403: the token is forged, expired or revoked; the worker must stop."""


def _error_of(response: httpx.Response) -> ApiError:
    cls = TokenRejected if response.status_code in (401, 403) else ApiError
    return cls.from_response(response)


def _in_progress(response: httpx.Response | None) -> bool:
    """A 409 ``event_in_progress``: the API still holds our earlier try of this event (cut
    by an outage; it expires), so the post is retried rather than taken as a lost lease."""
    return problem_code(response) == "event_in_progress"


def _result_refused(epoch: int, lease_id: str) -> FailureReport:
    """A computed result the API does not take (not finite, malformed): a permanent failure."""
    return FailureReport(
        epoch=epoch,
        lease_id=lease_id,
        retryable=False,
        code="result_refused",
        reason="the API refused the computed result as invalid",
    )


# ---------------------------------------------------------------------- credentials


@dataclass
class Credentials:
    """What ``enroll`` writes: the API, the server id and its worker token.

    ``enroll_token_digest`` names the enroll token the file came from, so a worker
    started with another enroll token knows the file is not the one it was told to use.
    """

    api: str
    server_id: str
    worker_token: str
    token_issued_at: float
    token_expires_at: float
    enroll_token_digest: str = ""

    @classmethod
    def load(cls, path: Path) -> Credentials:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("token file is readable by others; chmod 600 it", extra={"path": str(path)})
        data = json.loads(path.read_text())
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def save(self, path: Path) -> None:
        """Write atomically, readable only by this user (0600)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(self.__dict__, out, indent=2)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def should_renew(self, t: float) -> bool:
        lifetime = self.token_expires_at - self.token_issued_at
        return t >= self.token_issued_at + lifetime * 2 / 3


def local_capabilities(
    settings: ComputeSettings, engines: list[str], concurrency: int
) -> Capabilities:
    """The engines this machine can run, with the versions that go into task keys."""
    versions: dict[str, str] = {}
    for name in engines:
        try:
            version = get_engine(name, settings).version()
        except ZpeError as exc:
            log.warning("engine unavailable", extra={"engine": name, "error": exc.message})
            continue
        if version.endswith("-unknown"):
            log.warning("engine unavailable: version unknown", extra={"engine": name})
            continue
        versions[name] = version
    return Capabilities(
        engines=versions,
        cores=os.cpu_count(),
        max_concurrency=concurrency,
        pw_command=settings.pw_command if "qe" in versions else None,
        hostname=socket.gethostname(),
    )


class TokenFileMismatch(Exception):
    """The token file belongs to another API than the one this worker was told to use."""


def must_enroll(token_file: Path, api: str | None, enroll_token: str | None) -> bool:
    """Whether to enroll before pulling, given the token file and what the command says.

    A missing token file needs an enroll token. An enroll token other than the one the
    file came from wins (the operator handed this server a new one). A file for another
    API is never used silently: with an enroll token the server enrolls with that API,
    without one this raises ``TokenFileMismatch``.
    """
    if not token_file.exists():
        return True
    creds = Credentials.load(token_file)
    if enroll_token and not digest_matches(enroll_token, creds.enroll_token_digest or "-"):
        return True
    if api and api.rstrip("/") != creds.api:
        if enroll_token:
            return True
        raise TokenFileMismatch(
            f"{token_file} holds a worker token for {creds.api}, not {api.rstrip('/')}: "
            "pass an enroll token for that API, or another --token-file"
        )
    return False


def enroll(
    api: str,
    enroll_token: str,
    *,
    name: str,
    token_file: Path,
    capabilities: Capabilities,
    targets: list[str] | None = None,
    labels: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Credentials:
    """Register this server with an enroll token and save its worker token (0600)."""
    registration = ServerRegistration(
        name=name, labels=labels or {}, targets=targets or None, capabilities=capabilities
    )
    with ApiClient(api, token=enroll_token, timeout=timeout) as client:
        response = client.send(
            "POST",
            "/calc/zpe/compute/servers",
            json=registration.model_dump(mode="json", exclude_none=True),
        )
    if response.status_code != 201:
        raise _error_of(response)
    enrolled = ServerEnrolled.model_validate(response.json())
    creds = Credentials(
        api=api.rstrip("/"),
        server_id=enrolled.server_id,
        worker_token=enrolled.worker_token,
        token_issued_at=now(),
        token_expires_at=enrolled.token_expires_at,
        enroll_token_digest=token_digest(enroll_token),
    )
    creds.save(token_file)
    log.info("enrolled", extra={"worker_id": creds.server_id, "targets": enrolled.targets})
    return creds


# ---------------------------------------------------------------------- reference densities


class ApiDensities:
    """Reference densities through the worker API, under the lease of the task being run
    (``zpe_core.jobs.compute.ReferenceDensities``): the API picks the reference from the task."""

    def __init__(self, api: ApiClient, grant: LeaseGranted, max_bytes: int) -> None:
        self._api = api
        self._path = f"/calc/zpe/compute/tasks/{grant.task_id}/reference-density"
        self._lease = {"X-Lease-Epoch": str(grant.epoch), "X-Lease-Id": grant.lease_id}
        self.max_bytes = max_bytes

    def fetch(self, spec: TaskSpec) -> bytes | None:
        headers = self._api.headers(self._lease)
        with self._api.http.stream("GET", self._path, headers=headers) as response:
            if response.status_code != 200:
                return None
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    log.warning("reference density over the size cap; starting cold")
                    return None
                chunks.append(chunk)
        return b"".join(chunks)

    def publish(self, spec: TaskSpec, blob: bytes) -> None:
        response = self._api.send("PUT", self._path, content=blob, headers=self._lease)
        if response.status_code != 200:
            log.warning("reference density not shared", extra={"error": str(_error_of(response))})


# ---------------------------------------------------------------------- the loop


@dataclass
class _Running:
    task_id: str
    epoch: int
    lease_id: str
    thread: threading.Thread
    released: bool = False


class PullWorker:
    """Leases and runs tasks until stopped (or ``max_tasks`` are finished)."""

    def __init__(
        self,
        token_file: Path,
        settings: PullWorkerSettings,
        *,
        api: str | None = None,
        engines: list[str] | None = None,
        concurrency: int | None = None,
        max_tasks: int | None = None,
        poll_wait_seconds: float = 20.0,
        idle_max_seconds: float = 5.0,
        backoff_max_seconds: float = 60.0,
        grace_seconds: float = 60.0,
    ) -> None:
        self.token_file = token_file
        self.settings = settings
        self.creds = Credentials.load(token_file)
        self.api = (api or self.creds.api).rstrip("/")
        self.concurrency = concurrency or settings.pull_concurrency
        self.capabilities = local_capabilities(
            settings, engines or settings.engines, self.concurrency
        )
        self.max_tasks = max_tasks
        self.poll_wait = poll_wait_seconds
        self.idle_max = idle_max_seconds
        self.backoff_max = backoff_max_seconds
        self.grace_seconds = grace_seconds
        self.finished = 0
        self.exit_code = EXIT_OK
        self._stop = threading.Event()
        self._release_now = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self.client = ApiClient(
            self.api, token=self.creds.worker_token, timeout=poll_wait_seconds + 30.0
        )

    # -------------------------------------------------------------- plumbing

    @property
    def worker_id(self) -> str:
        return self.creds.server_id

    def _post(
        self, path: str, body: LeaseRef | LeaseRequest | None, event_id: str | None = None
    ) -> httpx.Response:
        headers = {"X-Event-Id": event_id} if event_id else None
        payload = {} if body is None else body.model_dump(mode="json", exclude_none=True)
        return self.client.send("POST", path, json=payload, headers=headers)

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.backoff_max, 0.5 * 2 ** min(failures, 16))
        return random.uniform(ceiling / 2, ceiling)

    def install_signal_handlers(self) -> None:
        def handle(signum: int, frame: FrameType | None) -> None:
            if self._stop.is_set():
                self._release_now.set()
            self._stop.set()
            log.info("stopping: finishing or releasing current tasks", extra={"signal": signum})

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def stop(self) -> None:
        self._stop.set()

    # -------------------------------------------------------------- main loop

    def run(self, *, once: bool = False) -> int:
        """Lease and run tasks until stopped; returns the exit code."""
        if not self.capabilities.engines:
            log.error("no engine is available on this machine; nothing to do")
            return EXIT_CONFIG
        log.info(
            "pull worker started",
            extra={
                "worker_id": self.worker_id,
                "api": self.api,
                "engines": self.capabilities.engines,
                "concurrency": self.concurrency,
            },
        )
        failures = idle = started = 0
        try:
            while not self._stop.is_set():
                if self.max_tasks is not None and started >= self.max_tasks:
                    break
                if not self._wait_for_slot():
                    break
                try:
                    self._maybe_renew()
                    grant = self._lease()
                except TokenRejected as exc:
                    log.error("the API refused our token; stopping", extra={"code": exc.code})
                    self.exit_code = EXIT_TOKEN_REJECTED
                    break
                except (httpx.HTTPError, ApiError) as exc:
                    failures += 1
                    delay = self._backoff(failures)
                    log.warning(
                        "lease request failed; backing off",
                        extra={"error": str(exc), "retry_in": round(delay, 2)},
                    )
                    self._stop.wait(delay)
                    continue
                failures = 0
                if grant is None:
                    if once:
                        break
                    idle += 1
                    self._stop.wait(min(self.idle_max, 0.25 * 2 ** min(idle, 10)))
                    continue
                idle = 0
                started += 1
                self._start(grant)
                if once:
                    break
        finally:
            self._drain()
            self.client.close()
        log.info("pull worker stopped", extra={"worker_id": self.worker_id, "tasks": started})
        return self.exit_code

    def _wait_for_slot(self) -> bool:
        while not self._stop.is_set():
            with self._lock:
                if len(self._running) < self.concurrency:
                    return True
            self._stop.wait(0.1)
        return False

    def _maybe_renew(self) -> None:
        if not self.creds.should_renew(now()):
            return
        response = self._post(f"/calc/zpe/compute/servers/{self.worker_id}/token", None)
        if response.status_code != 200:
            raise _error_of(response)
        renewed = TokenRenewed.model_validate(response.json())
        self.creds.worker_token = self.client.token = renewed.worker_token
        self.creds.token_issued_at = now()
        self.creds.token_expires_at = renewed.token_expires_at
        self.creds.save(self.token_file)
        log.info("worker token renewed", extra={"worker_id": self.worker_id})

    def _lease(self) -> LeaseGranted | None:
        request = LeaseRequest(wait_seconds=self.poll_wait, capabilities=self.capabilities)
        response = self._post("/calc/zpe/compute/tasks/lease", request)
        if response.status_code == 204:
            return None
        if response.status_code != 200:
            raise _error_of(response)
        body = response.json()
        try:
            grant = LeaseGranted.model_validate(body)
        except ValidationError as exc:
            self._refuse(body, exc)
            return None
        if self._stop.is_set():  # asked to stop while we waited: give it straight back
            self._release(grant.task_id, grant.epoch, grant.lease_id)
            return None
        return grant

    def _refuse(self, body: Any, exc: ValidationError) -> None:
        """A grant this worker cannot read (a spec of a newer API, say) is still reported,
        so the task is retried elsewhere rather than held until its lease expires."""
        try:
            lease = LeaseRef.model_validate({k: body[k] for k in ("epoch", "lease_id")})
            task_id = str(body["task_id"])
        except (KeyError, TypeError, ValidationError):
            log.error("unreadable lease grant; its lease will expire", extra={"error": str(exc)})
            return
        log.error("unreadable lease grant", extra={"task_id": task_id, "error": str(exc)})
        failure = FailureReport(
            epoch=lease.epoch,
            lease_id=lease.lease_id,
            retryable=True,
            code="worker_error",
            reason=f"the worker cannot read the grant: {exc}"[:2000],
        )
        self._report(task_id, "failed", failure)

    def _start(self, grant: LeaseGranted) -> None:
        thread = threading.Thread(
            target=self._run_task, args=(grant,), name=f"zpe-task-{grant.task_id[:8]}"
        )
        thread.daemon = True
        with self._lock:
            self._running[grant.task_id] = _Running(
                grant.task_id, grant.epoch, grant.lease_id, thread
            )
        thread.start()

    def _drain(self) -> None:
        """Wait for running tasks; once stopping, release what is left after the grace period."""
        deadline: float | None = None
        while True:
            with self._lock:
                running = list(self._running.values())
            if not running:
                return
            if self._stop.is_set() and deadline is None:
                deadline = time.monotonic() + self.grace_seconds
            expired = deadline is not None and time.monotonic() >= deadline
            if self._release_now.is_set() or expired:
                break
            running[0].thread.join(timeout=0.2)
        for item in running:
            item.released = True
            self._release(item.task_id, item.epoch, item.lease_id)

    def _release(self, task_id: str, epoch: int, lease_id: str) -> None:
        try:
            response = self._post(
                f"/calc/zpe/compute/tasks/{task_id}/release",
                LeaseRef(epoch=epoch, lease_id=lease_id),
            )
            log.info(
                "task released",
                extra={
                    "task_id": task_id,
                    "worker_id": self.worker_id,
                    "status": response.status_code,
                },
            )
        except httpx.HTTPError as exc:  # the lease will expire instead
            log.warning("release failed", extra={"task_id": task_id, "error": str(exc)})

    # -------------------------------------------------------------- one task

    def _run_task(self, grant: LeaseGranted) -> None:
        task_id, epoch, lease_id = grant.task_id, grant.epoch, grant.lease_id
        extra = {
            "task_id": task_id,
            "worker_id": self.worker_id,
            "epoch": epoch,
            "job_id": grant.job_ids[0] if grant.job_ids else None,
        }
        lost = threading.Event()
        done = threading.Event()
        interval = min(grant.heartbeat_seconds, grant.lease_seconds / 3)
        beat = threading.Thread(
            target=self._heartbeat_loop,
            args=(task_id, epoch, lease_id, interval, lost, done),
            daemon=True,
        )
        beat.start()
        log.info("task started", extra=extra)
        started = time.monotonic()
        outcome: tuple[str, ResultSubmission | FailureReport]
        try:
            densities = (
                ApiDensities(self.client, grant, self.settings.warm_start_share_max_bytes)
                if self.settings.warm_start_share
                else None
            )
            result = compute_task(grant.spec, self.settings, task_id=task_id, densities=densities)
            try:
                body = ResultBody.model_validate(result.model_dump(exclude={"worker_id"}))
                outcome = ("result", ResultSubmission(epoch=epoch, lease_id=lease_id, result=body))
            except ValidationError as exc:  # what the API would refuse (e.g. a NaN force)
                log.error("computed result is invalid", extra={**extra, "error": str(exc)})
                outcome = ("failed", _result_refused(epoch, lease_id))
        except EngineError as exc:
            failure = FailureReport(
                epoch=epoch,
                lease_id=lease_id,
                retryable=exc.retryable,
                code=exc.code,
                reason=exc.message[:2000] or exc.code,
                detail=(exc.detail or "")[-8000:] or None,
            )
            outcome = ("failed", failure)
        except Exception as exc:
            # Anything else (an engine that cannot start, a result that is not finite)
            # must still be reported, and the slot freed below: a silent thread death
            # would hang this task on every worker that leases it after the lease expires.
            log.exception("task crashed", extra=extra)
            failure = FailureReport(
                epoch=epoch,
                lease_id=lease_id,
                retryable=True,
                code="worker_error",
                reason=f"{type(exc).__name__} on the worker: {exc}"[:2000],
            )
            outcome = ("failed", failure)
        finally:
            done.set()
            beat.join(timeout=5)
        try:
            with self._lock:
                released = self._running.get(task_id, _Running("", 0, "", beat)).released
            if lost.is_set() or released:
                log.warning("task abandoned: the lease moved on", extra=extra)
                return
            kind, report = outcome
            answer = self._report(task_id, kind, report)
            if answer == "invalid" and kind == "result":
                self._report(task_id, "failed", _result_refused(epoch, lease_id))
            log.info(
                "task finished",
                extra={
                    **extra,
                    "outcome": kind,
                    "answer": answer,
                    "seconds": round(time.monotonic() - started, 3),
                },
            )
        finally:
            with self._lock:
                self._running.pop(task_id, None)
                self.finished += 1

    def _heartbeat_loop(
        self,
        task_id: str,
        epoch: int,
        lease_id: str,
        interval: float,
        lost: threading.Event,
        done: threading.Event,
    ) -> None:
        failures = 0
        wait = interval
        while not done.wait(wait):
            try:
                response = self._post(
                    f"/calc/zpe/compute/tasks/{task_id}/heartbeat",
                    LeaseRef(epoch=epoch, lease_id=lease_id),
                )
            except httpx.HTTPError as exc:
                failures += 1
                wait = min(interval, self._backoff(failures))
                log.warning("heartbeat failed", extra={"task_id": task_id, "error": str(exc)})
                continue
            if response.status_code in (404, 409):
                log.warning(
                    "heartbeat refused: lease lost; abandoning",
                    extra={"task_id": task_id, "worker_id": self.worker_id},
                )
                lost.set()
                return
            failures = 0
            wait = interval

    def _report(self, task_id: str, kind: str, body: ResultSubmission | FailureReport) -> str:
        """Post a result or failure, retrying transient errors with the same event id.

        Returns ``ok``, ``conflict`` (409: lease lost), ``invalid`` (413/422) or ``gone``.
        """
        event_id = uuid.uuid4().hex
        deadline = time.monotonic() + max(120.0, 2 * self.settings.lease_seconds)
        failures = 0
        while True:
            try:
                response = self._post(f"/calc/zpe/compute/tasks/{task_id}/{kind}", body, event_id)
                status = response.status_code
            except httpx.HTTPError as exc:
                status, response = 0, None
                log.warning("report failed", extra={"task_id": task_id, "error": str(exc)})
            if status == 200:
                return "ok"
            if status == 409 and not _in_progress(response):
                log.warning("report refused: lease lost", extra={"task_id": task_id})
                return "conflict"
            if status in (413, 422):
                assert response is not None
                log.error(
                    "report refused as invalid",
                    extra={"task_id": task_id, "error": str(_error_of(response))},
                )
                return "invalid"
            if status in (401, 403, 404):
                return "gone"
            failures += 1
            if time.monotonic() > deadline or self._release_now.is_set():
                return "gone"
            time.sleep(self._backoff(failures))
