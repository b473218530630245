"""All settings, in one place, read from ``ZPE_*`` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from zpe_core.models import RetryPolicy

ExecutionMode = Literal["inprocess", "cloud-tasks", "http-pull"]


def _default_store_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return "file://" + str(Path(base) / "zpe" / "store")


class Settings(BaseSettings):
    """Service settings. Every field maps to ``ZPE_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="ZPE_", extra="ignore")

    store_url: str = Field(default_factory=_default_store_url)
    execution_mode: ExecutionMode = "inprocess"
    inprocess_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)

    # engines
    default_engine: str = "qe"
    allowed_engines: str = "qe,mock"
    pw_command: str = "pw.x"
    pseudo_dir: str = "/usr/share/espresso/pseudo"
    qe_version: str | None = Field(
        default=None, description="Engine version used in task keys; detected from pw.x if unset."
    )
    scratch_dir: str | None = None
    task_timeout_seconds: float = 3600.0

    # leases and retries
    lease_seconds: float = 120.0
    heartbeat_seconds: float = 20.0
    reaper_interval_seconds: float = 5.0
    retry_max: int = 3
    backoff_base_seconds: float = 10.0
    backoff_cap_seconds: float = 300.0

    # limits
    max_input_bytes: int = 1024 * 1024
    max_mobile_atoms: int = 64
    max_artifact_bytes: int = 16 * 1024 * 1024
    list_page_max: int = 100

    # API
    api_url: str = "http://127.0.0.1:8000"
    poll_retry_after_seconds: int = 2

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            retry_max=self.retry_max,
            backoff_base_seconds=self.backoff_base_seconds,
            backoff_cap_seconds=self.backoff_cap_seconds,
        )

    @property
    def engines(self) -> list[str]:
        return [name.strip() for name in self.allowed_engines.split(",") if name.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own ``Settings`` instead)."""
    return Settings()
