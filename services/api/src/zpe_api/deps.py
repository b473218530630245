"""Request dependencies: the service objects built at start-up, and the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from zpe_api.edge import client_address
from zpe_api.status_cache import StatusCache
from zpe_core.control.api_keys import ANONYMOUS, ApiKeyRegistry, resolve_owner
from zpe_core.control.compute_servers import ComputeRegistry, ComputeServer, check_admin
from zpe_core.control.limits import TokenBucketLimiter
from zpe_core.control.pull import PullCoordinator
from zpe_core.edge.iap import ASSERTION_HEADER, IapVerifier
from zpe_core.jobs.service import JobService
from zpe_core.settings import ApiSettings
from zpe_core.store.base import JobStore


def get_service(request: Request) -> JobService:
    service: JobService = request.app.state.service
    return service


def get_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


def get_app_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


async def current_owner(request: Request, authorization: AuthorizationHeader = None) -> str:
    """The caller's identity (the owner of the jobs it submits and may see).

    A bearer API key names its owner (forged or revoked: 401, in every mode);
    else, when ``ZPE_TRUSTED_IDENTITY_HEADER`` is set, the email of IAP's signed
    assertion (missing or invalid: 401); else ``anonymous`` if ``ZPE_AUTH_MODE=none``,
    and 401 otherwise. ``async``: without a credential to check there is no I/O, and a
    sync dependency costs a thread-pool hop per request; a key (a store read) or an
    assertion (maybe a fetch of IAP's keys) is checked in the thread pool.
    """
    settings = get_app_settings(request)
    if authorization is None and not settings.trusted_identity_header:
        return _resolve_owner(request, settings, None)
    return await run_in_threadpool(_resolve_owner, request, settings, authorization)


def _resolve_owner(request: Request, settings: ApiSettings, authorization: str | None) -> str:
    identity = None
    if settings.trusted_identity_header and authorization is None:
        # Identity-aware proxy mode: the identity is that of IAP's signed assertion,
        # verified; the plain identity header is never believed (anyone can send it).
        verifier: IapVerifier = request.app.state.iap_verifier
        identity = verifier.identity(request.headers.get(ASSERTION_HEADER))
    return resolve_owner(
        ApiKeyRegistry(get_store(request)),
        auth_mode=settings.auth_mode,
        bearer=bearer_token(authorization),
        authorization_present=authorization is not None,
        identity=identity,
    )


async def poll_limit(request: Request, owner: Annotated[str, Depends(current_owner)]) -> None:
    """429 with ``Retry-After`` when this owner (or, anonymous, this address) reads too fast.

    Guards every read route of the user API, one bucket per caller for all of them.
    An authenticated caller is keyed by owner (whatever address it comes from); the
    anonymous one by client address, as vouched for by ``ZPE_TRUSTED_PROXIES``.
    ``async``: no I/O, and a sync dependency costs a thread-pool hop per request
    (``bench/polling_load.py``)."""
    limiter: TokenBucketLimiter | None = getattr(request.app.state, "poll_limiter", None)
    if limiter is None:
        return
    if owner == ANONYMOUS:
        limiter.check(f"ip:{client_address(request, get_app_settings(request))}")
    else:
        limiter.check(f"owner:{owner}")


async def polling_owner(request: Request) -> str:
    """``current_owner`` then ``poll_limit``, called by a route instead of declared: the
    status poll, for which FastAPI's solving of each declared dependency cost more than
    the rest of the poll (``bench/polling_load.py``)."""
    owner = await current_owner(request, request.headers.get("authorization"))
    await poll_limit(request, owner)
    return owner


def status_cache(request: Request) -> StatusCache:
    statuses: StatusCache = request.app.state.status_cache
    return statuses


async def _service_dep(request: Request) -> JobService:
    return get_service(request)


async def _store_dep(request: Request) -> JobStore:
    return get_store(request)


async def _settings_dep(request: Request) -> ApiSettings:
    return get_app_settings(request)


# The aliases resolve through ``async`` wrappers: attribute look-ups, no I/O, so
# they run on the event loop instead of costing a thread-pool hop each per request.
ServiceDep = Annotated[JobService, Depends(_service_dep)]
StoreDep = Annotated[JobStore, Depends(_store_dep)]
SettingsDep = Annotated[ApiSettings, Depends(_settings_dep)]
OwnerDep = Annotated[str, Depends(current_owner)]


# Pull workers and admin (http-pull mode) -------------------------------------------


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (``None`` otherwise)."""
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
    check_admin(get_app_settings(request), bearer_token(authorization))
    return "admin"


def require_worker(request: Request, authorization: AuthorizationHeader = None) -> ComputeServer:
    """The compute server whose worker token is presented (401 if none, forged, expired)."""
    return get_registry(request).authenticate(bearer_token(authorization))


def enroll_token(authorization: AuthorizationHeader = None) -> str | None:
    """The enroll token presented as the bearer of ``POST /calc/zpe/compute/servers``."""
    return bearer_token(authorization)


def require_submission_enabled(request: Request) -> None:
    """503 while the ``submission_enabled`` switch is off."""
    get_registry(request).require_submission_enabled()


RegistryDep = Annotated[ComputeRegistry, Depends(get_registry)]
CoordinatorDep = Annotated[PullCoordinator, Depends(get_coordinator)]
AdminDep = Annotated[str, Depends(require_admin)]
WorkerDep = Annotated[ComputeServer, Depends(require_worker)]
EnrollTokenDep = Annotated[str | None, Depends(enroll_token)]
