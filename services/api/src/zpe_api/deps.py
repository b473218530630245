"""Request dependencies: the service objects built at start-up, and the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from zpe_core.service import JobService
from zpe_core.settings import Settings
from zpe_core.store.base import JobStore


def get_service(request: Request) -> JobService:
    service: JobService = request.app.state.service
    return service


def get_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def current_owner() -> str:
    """The caller's identity. One shared owner until user authentication lands."""
    return "anonymous"


ServiceDep = Annotated[JobService, Depends(get_service)]
StoreDep = Annotated[JobStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
OwnerDep = Annotated[str, Depends(current_owner)]
