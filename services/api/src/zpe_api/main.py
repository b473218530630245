"""The control plane: a FastAPI app that accepts jobs and serves results.

It never runs a calculation itself. In the embedded ``inprocess`` mode its
dispatcher starts local worker processes; in the split modes it only talks
to the store and the queue.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from zpe_api.edge import install_host_check, trusted_networks
from zpe_api.observability import install_observability
from zpe_api.problems import install_problem_handlers, problem_responses
from zpe_api.routers import admin, api_keys, calc, compute, health, jobs, metrics, ui
from zpe_api.routers.compute import DENSITY_PATH, OUTCOMES_PATH, RESULT_PATH
from zpe_api.status_cache import StatusCache
from zpe_core import __version__
from zpe_core.bootstrap import ControlPlane
from zpe_core.edge.body_limit import BodyLimit, RouteLimit
from zpe_core.edge.iap import IapVerifier
from zpe_core.settings import ApiSettings, get_settings

log = logging.getLogger("zpe.api")


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """Build the API app for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        plane = ControlPlane.open(settings)
        plane.start()
        app.state.settings = settings
        app.state.store = plane.store
        app.state.service = plane.service
        app.state.dispatcher = plane.dispatcher
        app.state.status_cache = StatusCache(plane.service, jobs.status_json)
        log.info(
            "api started",
            extra={
                "execution_mode": settings.execution_mode,
                "store": plane.store.__class__.__name__,
            },
        )
        try:
            yield
        finally:
            plane.stop()

    app = FastAPI(
        title="ZPE compute service",
        version=__version__,
        description="Zero-point energies from finite differences of pw.x forces.",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    # Refuses ZPE_TRUSTED_IDENTITY_HEADER without IAP's audience or behind a public ingress.
    app.state.iap_verifier = IapVerifier(settings) if settings.trusted_identity_header else None
    trusted_networks(settings.trusted_proxies)  # a malformed ZPE_TRUSTED_PROXIES fails here
    # The body cap wraps everything but the request ids: a chunked body without a
    # Content-Length is cut at the cap before any route or credential check runs.
    app.add_middleware(
        BodyLimit,
        limit=settings.max_input_bytes + 64 * 1024,
        routes=[
            RouteLimit(
                RESULT_PATH, settings.max_result_bytes, "result_too_large", "worker results"
            ),
            RouteLimit(
                OUTCOMES_PATH,
                settings.max_result_bytes * settings.pull_batch_max,
                "result_too_large",
                "batches of worker results",
            ),
            RouteLimit(
                DENSITY_PATH,
                settings.warm_start_share_max_bytes,
                "density_too_large",
                "reference densities",
            ),
        ],
    )
    install_host_check(app, settings)  # DNS rebinding (ZPE_AUTH_MODE=none only)
    install_observability(app, settings)  # request ids (outermost), poll limiter, secrets
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(api_keys.router)
    app.include_router(jobs.router)
    # Problem answers every worker/admin/calc route may give, declared in the OpenAPI
    # (the fuzz suite checks every status received is documented).
    worker_admin = problem_responses(400, 401, 403, 404, 409, 413, 422, 503)
    app.include_router(compute.router, responses=worker_admin)
    app.include_router(admin.router, responses=worker_admin)
    app.include_router(calc.router, responses=problem_responses(400, 413, 422))
    app.include_router(ui.router)
    ui.mount_assets(app)
    return app
