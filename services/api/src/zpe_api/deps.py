"""Request dependencies: the service objects built at start-up, and the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from zpe_core.api_keys import ANONYMOUS, ApiKeyRegistry, resolve_owner
from zpe_core.compute_servers import ComputeRegistry, ComputeServer, check_admin
from zpe_core.limits import TokenBucketLimiter
from zpe_core.pull import PullCoordinator
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


def current_owner(request: Request, authorization: AuthorizationHeader = None) -> str:
    """The caller's identity (the owner of the jobs it submits and may see).

    A bearer API key names its owner (forged or revoked: 401, in every mode);
    else the trusted identity header, when ``ZPE_TRUSTED_IDENTITY_HEADER`` names
    one; else ``anonymous`` if ``ZPE_AUTH_MODE=none``, and 401 otherwise.
    """
    settings = get_app_settings(request)
    identity = None
    if settings.trusted_identity_header:
        identity = request.headers.get(settings.trusted_identity_header)
    return resolve_owner(
        ApiKeyRegistry(get_store(request)),
        auth_mode=settings.auth_mode,
        bearer=_bearer(authorization),
        authorization_present=authorization is not None,
        identity=identity,
    )


async def poll_limit(request: Request, owner: Annotated[str, Depends(current_owner)]) -> None:
    """429 with ``Retry-After`` when this owner (or, anonymous, this address) polls too fast.

    ``async``: no I/O, and a sync dependency costs a thread-pool hop per request
    (``bench/polling_load.py``)."""
    limiter: TokenBucketLimiter | None = getattr(request.app.state, "poll_limiter", None)
    if limiter is None:
        return
    client = request.client.host if request.client else "unknown"
    limiter.check(f"ip:{client}" if owner == ANONYMOUS else f"owner:{owner}")


async def _service_dep(request: Request) -> JobService:
    return get_service(request)


async def _store_dep(request: Request) -> JobStore:
    return get_store(request)


async def _settings_dep(request: Request) -> Settings:
    return get_app_settings(request)


# The aliases resolve through ``async`` wrappers: attribute look-ups, no I/O, so
# they run on the event loop instead of costing a thread-pool hop each per request.
ServiceDep = Annotated[JobService, Depends(_service_dep)]
StoreDep = Annotated[JobStore, Depends(_store_dep)]
SettingsDep = Annotated[Settings, Depends(_settings_dep)]
OwnerDep = Annotated[str, Depends(current_owner)]


# Pull workers and admin (http-pull mode) -------------------------------------------


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def get_registry(request: Request) -> ComputeRegistry:
    return ComputeRegistry(get_store(request), get_app_settings(request))


def get_coordinator(request: Request) -> PullCoordinator:
    return PullCoordinator(get_service(request), get_registry(request))


AuthorizationHeader = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]


def require_admin(request: Request, authorization: AuthorizationHeader = None) -> str:
    """Admin bearer token check; closed (403) when no admin token is configured."""
    check_admin(get_app_settings(request), _bearer(authorization))
    return "admin"


def require_worker(request: Request, authorization: AuthorizationHeader = None) -> ComputeServer:
    """The compute server whose worker token is presented (401 if none, forged, expired)."""
    return get_registry(request).authenticate(_bearer(authorization))


def enroll_token(authorization: AuthorizationHeader = None) -> str | None:
    """The enroll token presented as the bearer of ``POST /calc/zpe/compute/servers``."""
    return _bearer(authorization)


def require_submission_enabled(request: Request) -> None:
    """503 while the ``submission_enabled`` switch is off."""
    get_registry(request).require_submission_enabled()


RegistryDep = Annotated[ComputeRegistry, Depends(get_registry)]
CoordinatorDep = Annotated[PullCoordinator, Depends(get_coordinator)]
AdminDep = Annotated[str, Depends(require_admin)]
WorkerDep = Annotated[ComputeServer, Depends(require_worker)]
EnrollTokenDep = Annotated[str | None, Depends(enroll_token)]
