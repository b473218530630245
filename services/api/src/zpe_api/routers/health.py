"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

from zpe_api.deps import SettingsDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(store: StoreDep, settings: SettingsDep) -> dict[str, str]:
    """The store answers (a ``StoreUnavailable`` becomes a 503 with the reason)."""
    store.ping()
    return {"status": "ready", "execution_mode": settings.execution_mode}
