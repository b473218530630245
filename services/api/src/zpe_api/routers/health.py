"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

from zpe_api.deps import SettingsDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (``async``: no I/O, so no thread-pool hop)."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(store: StoreDep, settings: SettingsDep) -> dict[str, str]:
    """The store answers (else 503 ``store_unavailable``; the reason is logged)."""
    store.ping()
    return {"status": "ready", "execution_mode": settings.execution_mode}
