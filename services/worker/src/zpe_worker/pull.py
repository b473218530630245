"""The pull worker: a compute server behind NAT that leases tasks over HTTPS.

``enroll`` trades a single-use enroll token for a worker token, kept in a file
only this user can read (0600). ``PullWorker.run`` then loops: renew the
token when two thirds of its life are gone, wait until a slot is free (woken
when one is), long-poll for as many leases as it has free slots (one request),
run each task with the local engine (``zpe_core.jobs.compute.compute_task``)
while one heartbeat thread extends every running lease (one request per beat),
and post results and failures, each under its lease's epoch with its own event
id (a retried post is answered the same). Outcomes that finish while a post is
in flight go together in the next one.

* A heartbeat item answered 409 means that lease moved on: the task is
  abandoned and its result never posted (the other tasks carry on).
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
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from zpe_client.compute import (
    BatchAnswer,
    Capabilities,
    FailureBody,
    HeartbeatBatch,
    HeldLease,
    ItemAnswer,
    LeaseBatchRequest,
    LeaseGranted,
    LeaseRef,
    OutcomeBatch,
    OutcomeItem,
    ResultBody,
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


def _result_refused() -> FailureBody:
    """A computed result the API does not take (not finite, malformed): a permanent failure."""
    return FailureBody(
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
    #: Set by the heartbeat thread when the API says the lease moved on.
    lost: threading.Event = field(default_factory=threading.Event)
    #: Set when the engine is done with it: no more heartbeats.
    computed: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Outcome:
    """A result or failure waiting to be posted, with its lease and event id."""

    item: OutcomeItem
    extra: dict[str, Any]
    started: float
    deadline: float

    @property
    def task_id(self) -> str:
        return self.item.task_id

    @property
    def kind(self) -> str:
        return "result" if self.item.result is not None else "failed"


def _outcome_item(
    task_id: str, epoch: int, lease_id: str, body: ResultBody | FailureBody
) -> OutcomeItem:
    """One task's outcome under its lease, with a fresh event id (kept across retries)."""
    kind = "result" if isinstance(body, ResultBody) else "failure"
    return OutcomeItem.model_validate(
        {
            "task_id": task_id,
            "epoch": epoch,
            "lease_id": lease_id,
            "event_id": uuid.uuid4().hex,
            kind: body,
        }
    )


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
        self._closed = threading.Event()
        # Reentrant: the signal handler wakes the main thread through it.
        self._lock = threading.RLock()
        self._slot_freed = threading.Condition(self._lock)
        self._running: dict[str, _Running] = {}
        #: Most tasks per lease, heartbeat or outcome request: the API's
        #: ``ZPE_PULL_BATCH_MAX`` once a lease answer has said it.
        self.batch_max = settings.pull_batch_max
        self._outbox: list[_Outcome] = []
        self._posting = False
        self._beat_interval: float | None = None
        self._beater: threading.Thread | None = None
        self.client = ApiClient(
            self.api, token=self.creds.worker_token, timeout=poll_wait_seconds + 30.0
        )

    # -------------------------------------------------------------- plumbing

    @property
    def worker_id(self) -> str:
        return self.creds.server_id

    def _post(
        self, path: str, body: BaseModel | None, event_id: str | None = None
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
            self.stop()
            log.info("stopping: finishing or releasing current tasks", extra={"signal": signum})

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def stop(self) -> None:
        self._stop.set()
        with self._slot_freed:
            self._slot_freed.notify_all()

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
                free = self._wait_for_slot()
                if not free:
                    break
                if self.max_tasks is not None:
                    free = min(free, self.max_tasks - started)
                try:
                    self._maybe_renew()
                    grants = self._lease(min(free, self.batch_max))
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
                if not grants:
                    if once:
                        break
                    idle += 1
                    self._stop.wait(min(self.idle_max, 0.25 * 2 ** min(idle, 10)))
                    continue
                idle = 0
                for grant in grants:
                    started += 1
                    self._start(grant)
                if once:
                    break
        finally:
            self._drain()
            self._closed.set()
            self.client.close()
        log.info("pull worker stopped", extra={"worker_id": self.worker_id, "tasks": started})
        return self.exit_code

    def _wait_for_slot(self) -> int:
        """The number of free slots, waiting (woken by a freed slot) for one; 0 if stopping."""
        with self._slot_freed:
            while not self._stop.is_set():
                free = self.concurrency - len(self._running)
                if free > 0:
                    return free
                # Woken by ``_free_slot`` or ``stop``; the timeout is only a backstop.
                self._slot_freed.wait(timeout=5.0)
        return 0

    def _free_slot(self, task_id: str) -> None:
        with self._slot_freed:
            if self._running.pop(task_id, None) is not None:
                self.finished += 1
            self._slot_freed.notify_all()

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

    def _lease(self, want: int) -> list[LeaseGranted]:
        """Lease up to ``want`` tasks in one (long-poll) request; ``[]`` if none came."""
        request = LeaseBatchRequest(
            wait_seconds=self.poll_wait, capabilities=self.capabilities, max_tasks=want
        )
        response = self._post("/calc/zpe/compute/tasks/leases", request)
        if response.status_code == 204:
            return []
        if response.status_code != 200:
            error = _error_of(response)
            if error.code == "batch_too_large" and want > 1:
                # The API allows fewer than we asked: one task now; its answer says how many.
                self.batch_max = 1
                return self._lease(1)
            raise error
        data = response.json()
        self.batch_max = max(1, int(data.get("batch_max") or self.batch_max))
        grants: list[LeaseGranted] = []
        for body in data.get("leases") or []:
            try:
                grants.append(LeaseGranted.model_validate(body))
            except ValidationError as exc:
                self._refuse(body, exc)
        if self._stop.is_set():  # asked to stop while we waited: give them straight back
            for grant in grants:
                self._release(grant.task_id, grant.epoch, grant.lease_id)
            return []
        return grants

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
        failure = FailureBody(
            retryable=True,
            code="worker_error",
            reason=f"the worker cannot read the grant: {exc}"[:2000],
        )
        item = _outcome_item(task_id, lease.epoch, lease.lease_id, failure)
        deadline = time.monotonic() + max(120.0, 2 * self.settings.lease_seconds)
        self._report(_Outcome(item, {"task_id": task_id}, time.monotonic(), deadline))

    def _start(self, grant: LeaseGranted) -> None:
        thread = threading.Thread(
            target=self._run_task, args=(grant,), name=f"zpe-task-{grant.task_id[:8]}"
        )
        thread.daemon = True
        interval = min(grant.heartbeat_seconds, grant.lease_seconds / 3)
        with self._lock:
            self._running[grant.task_id] = _Running(
                grant.task_id, grant.epoch, grant.lease_id, thread
            )
            self._beat_interval = min(interval, self._beat_interval or interval)
            if self._beater is None or not self._beater.is_alive():
                self._beater = threading.Thread(
                    target=self._heartbeat_loop, name="zpe-heartbeats", daemon=True
                )
                self._beater.start()
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
        with self._lock:
            running = self._running[task_id]
        log.info("task started", extra=extra)
        started = time.monotonic()
        outcome: ResultBody | FailureBody
        try:
            densities = (
                ApiDensities(self.client, grant, self.settings.warm_start_share_max_bytes)
                if self.settings.warm_start_share
                else None
            )
            result = compute_task(grant.spec, self.settings, task_id=task_id, densities=densities)
            try:
                outcome = ResultBody.model_validate(result.model_dump(exclude={"worker_id"}))
            except ValidationError as exc:  # what the API would refuse (e.g. a NaN force)
                log.error("computed result is invalid", extra={**extra, "error": str(exc)})
                outcome = _result_refused()
        except EngineError as exc:
            outcome = FailureBody(
                retryable=exc.retryable,
                code=exc.code,
                reason=exc.message[:2000] or exc.code,
                detail=(exc.detail or "")[-8000:] or None,
            )
        except Exception as exc:
            # Anything else (an engine that cannot start, a result that is not finite)
            # must still be reported, and the slot freed below: a silent thread death
            # would hang this task on every worker that leases it after the lease expires.
            log.exception("task crashed", extra=extra)
            outcome = FailureBody(
                retryable=True,
                code="worker_error",
                reason=f"{type(exc).__name__} on the worker: {exc}"[:2000],
            )
        finally:
            running.computed.set()
        try:
            with self._lock:
                released = running.released
            if running.lost.is_set() or released:
                log.warning("task abandoned: the lease moved on", extra=extra)
                self._free_slot(task_id)
                return
            deadline = time.monotonic() + max(120.0, 2 * self.settings.lease_seconds)
            item = _outcome_item(task_id, epoch, lease_id, outcome)
            self._report(_Outcome(item, extra, started, deadline))
        except BaseException:
            self._free_slot(task_id)
            raise

    def _heartbeat_loop(self) -> None:
        """Extend every lease whose task is still computing, one request per beat; an item
        answered 404/409 marks that task lost (abandoned, its result never posted)."""
        failures = 0
        wait = self._beat_interval or 1.0
        while not self._closed.wait(wait):
            interval = self._beat_interval or 1.0
            wait = interval
            with self._lock:
                beating = [r for r in self._running.values() if not r.computed.is_set()]
            for chunk in _chunks(beating, self.batch_max):
                leases = [
                    HeldLease(task_id=r.task_id, epoch=r.epoch, lease_id=r.lease_id) for r in chunk
                ]
                try:
                    response = self._post(
                        "/calc/zpe/compute/tasks/heartbeats", HeartbeatBatch(leases=leases)
                    )
                except httpx.HTTPError as exc:
                    failures += 1
                    wait = min(interval, self._backoff(failures))
                    log.warning("heartbeat failed", extra={"error": str(exc)})
                    continue
                if response.status_code != 200:
                    failures += 1
                    wait = min(interval, self._backoff(failures))
                    log.warning("heartbeat failed", extra={"error": str(_error_of(response))})
                    continue
                try:
                    items = _items(response, len(chunk))
                except ValueError as exc:  # an answer we cannot read: beat again next time
                    log.warning("heartbeat answer unreadable", extra={"error": str(exc)})
                    continue
                failures = 0
                for running, item in zip(chunk, items, strict=True):
                    if item.status in (404, 409):
                        log.warning(
                            "heartbeat refused: lease lost; abandoning",
                            extra={"task_id": running.task_id, "worker_id": self.worker_id},
                        )
                        running.lost.set()

    # -------------------------------------------------------------- outcomes

    def _report(self, outcome: _Outcome) -> None:
        """Queue ``outcome``; post the queue unless a post is in flight, whose poster then
        takes it in its next request. The poster frees each slot once its outcome is settled.
        """
        with self._lock:
            self._outbox.append(outcome)
            if self._posting:
                return
            self._posting = True
        failures = 0
        while True:
            with self._lock:
                if not self._outbox:
                    self._posting = False
                    return
                batch = self._outbox[: self.batch_max]
                del self._outbox[: len(batch)]
            try:
                retry = self._post_outcomes(batch)
            except Exception:  # a bug must not hang every slot: settle the batch as lost
                log.exception("posting outcomes crashed")
                for item in batch:
                    self._settle(item, "gone")
                continue
            if not retry:
                failures = 0
                continue
            failures += 1
            for item in retry:
                if time.monotonic() > item.deadline or self._release_now.is_set():
                    self._settle(item, "gone")
                else:
                    with self._lock:
                        self._outbox.append(item)
            time.sleep(self._backoff(failures))

    def _post_outcomes(self, batch: list[_Outcome]) -> list[_Outcome]:
        """Post ``batch`` in one request and settle what was answered; returns the outcomes
        to post again (network errors, 5xx, an event the API is still processing)."""
        try:
            response = self._post(
                "/calc/zpe/compute/tasks/outcomes", OutcomeBatch(outcomes=[o.item for o in batch])
            )
        except httpx.HTTPError as exc:
            log.warning("report failed", extra={"tasks": len(batch), "error": str(exc)})
            return batch
        status = response.status_code
        if status == 200:
            retry = []
            items = _items(response, len(batch))
            # Free the batch's slots together (the lock is reentrant): the main loop wakes
            # once and leases them all in one request rather than one by one.
            with self._slot_freed:
                for outcome, item in zip(batch, items, strict=True):
                    answer = _answer(item.status, item.code)
                    if answer == "retry":
                        retry.append(outcome)
                    else:
                        self._settle(outcome, answer)
            return retry
        if status in (413, 422) and len(batch) > 1:
            # One item spoils the request: post them one by one to find which.
            return [o for o in batch if self._post_outcomes([o])]
        answer = _answer(status, problem_code(response))
        if answer == "retry":
            return batch
        if answer == "invalid":
            log.error("report refused as invalid", extra={"error": str(_error_of(response))})
        for outcome in batch:
            self._settle(outcome, answer)
        return []

    def _settle(self, outcome: _Outcome, answer: str) -> None:
        """The API's last word on ``outcome``: ``ok``, ``conflict`` (the lease was lost),
        ``invalid`` (a refused result is reported as a permanent failure) or ``gone``."""
        if answer == "conflict":
            log.warning("report refused: lease lost", extra={"task_id": outcome.task_id})
        if answer == "invalid" and outcome.kind == "result":
            log.error("result refused as invalid", extra={"task_id": outcome.task_id})
            item = _outcome_item(
                outcome.task_id, outcome.item.epoch, outcome.item.lease_id, _result_refused()
            )
            with self._lock:
                self._outbox.append(
                    _Outcome(item, outcome.extra, outcome.started, outcome.deadline)
                )
            return
        log.info(
            "task finished",
            extra={
                **outcome.extra,
                "outcome": outcome.kind,
                "answer": answer,
                "seconds": round(time.monotonic() - outcome.started, 3),
            },
        )
        self._free_slot(outcome.task_id)


def _chunks(items: list[_Running], size: int) -> list[list[_Running]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _items(response: httpx.Response, count: int) -> list[ItemAnswer]:
    """The per-item answers of a batch request, one per item sent."""
    items = BatchAnswer.model_validate(response.json()).items
    if len(items) != count:
        raise ValueError(f"{len(items)} answers to {count} items")
    return items


def _answer(status: int, code: str | None) -> str:
    """What a post's (or one item's) status means for its outcome."""
    if status == 200:
        return "ok"
    if status == 409:
        # ``event_in_progress``: the API still holds our earlier try of this event (cut by
        # an outage; it expires), so it is posted again rather than taken as a lost lease.
        return "retry" if code == "event_in_progress" else "conflict"
    if status in (413, 422):
        return "invalid"
    if status in (401, 403, 404):
        return "gone"
    return "retry"
