"""Every setting, read from ``ZPE_*`` environment variables here and nowhere else.

Each process has its class, built from the groups it uses (a field maps to
``ZPE_<FIELD>``, upper case; names and defaults are the same in every class):

* ``ComputeSettings``: running an engine (every process that computes);
* ``ServiceSettings``: the store and the job machinery (``JobService``);
* ``ApiSettings`` (the API), ``PushWorkerSettings`` (``zpe-worker serve``),
  ``PullWorkerSettings`` (``zpe-worker pull``: no store, no control plane);
* ``Settings``: all of them at once, for the embedded single-process setup,
  tools and tests (``docs/configuration.md`` lists every variable).

The client's variables (``ZPE_API_URL``, ``ZPE_API_KEY`` of the ``zpe`` CLI) are
read by the client.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from zpe_core.jobs.models import DEFAULT_TARGET, RetryPolicy
from zpe_core.physics.namelists import InputLimits

ExecutionMode = Literal["inprocess", "cloud-tasks", "http-pull"]
AuthMode = Literal["none", "api-keys"]
ReuseScope = Literal["owner", "global"]


def _default_store_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return "file://" + str(Path(base) / "zpe" / "store")


class CommonSettings(BaseSettings):
    """What every process reads."""

    model_config = SettingsConfigDict(env_prefix="ZPE_", extra="ignore")

    log_level: str = Field(default="INFO", description="Log level of the JSON logs.")


class ComputeSettings(CommonSettings):
    """Running an engine on a task: engines, input re-checks, pw.x limits, warm starts."""

    allowed_engines: str = "qe,mock"
    pw_command: str = "pw.x"
    pseudo_dir: str = "/usr/share/espresso/pseudo"
    qe_version: str | None = Field(
        default=None, description="Engine version used in task keys; detected from pw.x if unset."
    )
    scratch_dir: str | None = None
    task_timeout_seconds: float = 3600.0
    mock_delay_seconds: float = Field(default=0.0, ge=0.0, le=600.0)
    lease_seconds: float = 120.0
    heartbeat_seconds: float = 20.0
    pull_batch_max: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Most tasks one pull lease, heartbeat or outcome request names.",
    )
    max_atoms: int = Field(default=200, ge=1, description="Atoms per input (&SYSTEM nat).")
    max_ecutwfc: float = Field(default=200.0, gt=0.0, description="Ry.")
    max_ecutrho: float = Field(default=1600.0, gt=0.0, description="Ry.")
    max_kpoints: int = Field(default=1000, ge=1, description="nk1*nk2*nk3 of K_POINTS.")
    max_nbnd: int = Field(default=2000, ge=1)
    max_electron_maxstep: int = Field(default=500, ge=1)
    pw_max_memory_mb: int = Field(
        default=16 * 1024, ge=0, description="RLIMIT_AS of pw.x (per MPI rank), MiB."
    )
    pw_max_file_mb: int = Field(
        default=4 * 1024, ge=0, description="RLIMIT_FSIZE of pw.x (largest file it writes), MiB."
    )
    warm_start: bool = Field(
        # On by default: with every SCF at conv_thr x 1e-3 (engines.qe.SCF_CONV_THR_FACTOR)
        # warm and cold agree within 0.1 cm^-1 on H2O, NH3, CH4 and CO2 (docs/benchmarks.md).
        default=True,
        description="Start displaced pw.x SCFs from the reference point's converged charge "
        "density (and wavefunctions at Gamma), shipped to other workers when shared.",
    )
    warm_start_dir: str | None = Field(
        default=None,
        description="Local cache of reference outdirs; default <scratch_dir or tmp>/zpe-warm.",
    )
    warm_start_cache_entries: int = Field(
        default=8, ge=1, description="Reference outdirs kept in the local cache (LRU)."
    )
    warm_start_share: bool = Field(
        default=True,
        description="Ship each reference's converged density to the other workers (through "
        "the store, or the worker API for pull workers) so they warm-start too.",
    )
    warm_start_share_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="Largest shipped reference density (packed and unpacked); larger ones "
        "are not shipped and the other workers start cold.",
    )

    @property
    def engines(self) -> list[str]:
        return [name.strip() for name in self.allowed_engines.split(",") if name.strip()]

    @property
    def input_limits(self) -> InputLimits:
        return InputLimits(
            max_ecutwfc=self.max_ecutwfc,
            max_ecutrho=self.max_ecutrho,
            max_nbnd=self.max_nbnd,
            max_electron_maxstep=self.max_electron_maxstep,
            max_kpoints=self.max_kpoints,
            max_atoms=self.max_atoms,
        )


class PullWorkerSettings(ComputeSettings):
    """``zpe-worker pull``: a compute server that leases tasks from the API."""

    api_url: str = "http://127.0.0.1:8000"
    pull_concurrency: int = Field(default=1, ge=1, description="Tasks a pull worker runs at once.")
    enroll_token: SecretStr | None = Field(
        default=None, description="Single-use enroll token (or --enroll-token) to register."
    )


class ServiceSettings(ComputeSettings):
    """The store and the job machinery: what a ``JobService`` reads (API and push worker)."""

    store_url: str = Field(default_factory=_default_store_url)
    execution_mode: ExecutionMode = "inprocess"
    default_engine: str = "qe"
    retry_max: int = 3
    backoff_base_seconds: float = 10.0
    backoff_cap_seconds: float = 300.0
    max_input_bytes: int = 1024 * 1024
    max_mobile_atoms: int = 64
    max_artifact_bytes: int = 16 * 1024 * 1024
    max_plan_positions: int = Field(
        default=200_000, ge=1, description="Tasks x atoms of one job, checked before planning."
    )
    redispatch_after_seconds: float = Field(
        default=900.0, gt=0.0, description="Re-dispatch a task left queued this long."
    )
    warm_start_share_ttl_seconds: float = Field(
        default=6 * 3600.0,
        gt=0.0,
        description="Shipped reference densities are deleted by the reconciler this long "
        "after they were stored.",
    )
    auth_mode: AuthMode = Field(
        default="none",
        description="'none': callers without credentials are the one user 'anonymous' "
        "(embedded single-user default); 'api-keys': a bearer API key (or the trusted "
        "identity header) is required on the user API.",
    )
    trusted_identity_header: str | None = Field(
        default=None,
        description="Header set by a fronting proxy that names the caller, e.g. "
        "X-Goog-Authenticated-User-Email. Off when unset: never trust it otherwise.",
    )
    reuse_scope: ReuseScope | None = Field(
        default=None,
        description="'owner': finished tasks are reused only by jobs of the same owner; "
        "'global': by every job. Unset: 'owner' when users authenticate (ZPE_AUTH_MODE "
        "other than none, or a trusted identity header), else 'global'.",
    )
    targets: str = Field(
        default=DEFAULT_TARGET,
        description="Pull targets jobs may name even while no registered compute server "
        "serves them (comma-separated); any other target must be served by one.",
    )
    target_owners: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Targets open only to some owners, as JSON: {"gpu": ["alice"]}. '
        "Targets not listed are open to every owner.",
    )

    @property
    def reuse_across_owners(self) -> bool:
        """Whether one owner's job may reuse tasks another owner's job computed."""
        if self.reuse_scope is not None:
            return self.reuse_scope == "global"
        return self.auth_mode == "none" and not self.trusted_identity_header

    @property
    def configured_targets(self) -> list[str]:
        return [name.strip() for name in self.targets.split(",") if name.strip()]

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            retry_max=self.retry_max,
            backoff_base_seconds=self.backoff_base_seconds,
            backoff_cap_seconds=self.backoff_cap_seconds,
        )


class PushSettings(CommonSettings):
    """Cloud Tasks push, read by the API (it enqueues) and the push worker (it verifies)."""

    worker_audience: str | None = Field(
        default=None, description="OIDC audience of push requests (usually the worker URL)."
    )
    tasks_invoker_email: str | None = Field(
        default=None, description="Service account whose OIDC token push requests must carry."
    )
    tasks_emulator_host: str | None = Field(
        default=None, description="host:port of a Cloud Tasks emulator (insecure gRPC, no OIDC)."
    )
    push_shared_secret: SecretStr | None = Field(
        default=None,
        description="Only if set: push requests may authenticate with X-ZPE-Push-Secret "
        "(emulator and local runs, which carry no OIDC token).",
    )


class PushWorkerSettings(ServiceSettings, PushSettings):
    """``zpe-worker serve``: the push endpoint of Cloud Tasks."""

    oidc_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    tasks_max_attempts: int = Field(
        default=5, ge=1, description="The queue's max attempts (the last delivery gives up)."
    )
    worker_shutdown_grace_seconds: float = Field(
        default=8.0, ge=0.0, description="On SIGTERM, wait this long for running tasks."
    )


class ApiSettings(ServiceSettings, PushSettings):
    """The control plane: users, the edge, pull coordination, dispatch, observability."""

    inprocess_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    reaper_interval_seconds: float = 5.0
    reconcile_interval_seconds: float = Field(
        default=60.0,
        gt=0.0,
        description="How often the API's reaper reconciles the active jobs (repairs what a "
        "crash or a store outage left half-done); at most this long a job waits for it.",
    )
    list_page_max: int = 100
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token of the admin endpoints; unset: they are closed."
    )
    enroll_token_ttl_seconds: float = Field(default=3600.0, gt=0.0)
    worker_token_ttl_seconds: float = Field(default=7 * 24 * 3600.0, gt=0.0)
    lease_poll_max_seconds: float = Field(default=20.0, ge=0.0, le=120.0)
    max_result_bytes: int = Field(default=1024 * 1024, gt=0)
    tasks_queue: str | None = Field(
        default=None, description="Full queue path: projects/P/locations/L/queues/Q."
    )
    worker_url: str | None = Field(
        default=None, description="Base URL of the worker service (tasks POST to /internal/...)."
    )
    poll_retry_after_seconds: int = 2
    allow_anonymous_network: bool = Field(
        default=False,
        description="Let `zpe serve` run ZPE_AUTH_MODE=none on a non-loopback address "
        "(logged as a warning at every start); otherwise it refuses to start.",
    )
    api_key: SecretStr | None = Field(
        default=None, description="The CLI's bearer API key (ZPE_API_KEY); unused by servers."
    )
    max_active_jobs_per_owner: int = Field(
        default=100, ge=0, description="Jobs queued or running per owner; 0: no limit (429)."
    )
    active_jobs_retry_after_seconds: int = Field(default=30, ge=1)
    poll_rate_per_second: float = Field(
        default=50.0, ge=0.0, description="Job-status polls per owner (or IP); 0: no limit."
    )
    poll_burst: int = Field(default=300, ge=1, description="Polls allowed in a burst.")
    metrics_scan_limit: int = Field(
        default=1000, ge=0, description="Jobs / ready markers read per /metrics scrape (cap)."
    )
    metrics_cache_seconds: float = Field(
        default=30.0, ge=0.0, description="Store gauges are rescanned at most this often."
    )
    metrics_token: SecretStr | None = Field(
        default=None, description="If set, GET /metrics wants 'Authorization: Bearer <it>'."
    )
    allowed_hosts: str = Field(
        default="",
        description="Host names accepted besides localhost and the server's own address "
        "when ZPE_AUTH_MODE=none (DNS rebinding); comma-separated, '*' for any.",
    )
    trusted_proxies: str = Field(
        default="",
        description="IPs/CIDRs of proxies whose X-Forwarded-For is believed (comma-separated); "
        "'*': the direct peer is a proxy (Cloud Run). Unset: the peer address is the client.",
    )
    iap_audience: str | None = Field(
        default=None,
        description="Audience of IAP's signed header X-Goog-IAP-JWT-Assertion, e.g. "
        "/projects/NUMBER/global/backendServices/ID; required by ZPE_TRUSTED_IDENTITY_HEADER.",
    )
    iap_certs_url: str = "https://www.gstatic.com/iap/verify/public_key"
    ingress: Literal["all", "internal", "internal-and-cloud-load-balancing"] | None = Field(
        default=None,
        description="The API's ingress as deployed (Cloud Run); the trusted identity header "
        "is refused unless it is internal or internal-and-cloud-load-balancing.",
    )


class Settings(ApiSettings, PushWorkerSettings, PullWorkerSettings):
    """Every variable at once: the embedded single process, tools and tests."""


@lru_cache(maxsize=1)
def get_settings() -> ApiSettings:
    """The API process's settings (tests build their own instead)."""
    return ApiSettings()
