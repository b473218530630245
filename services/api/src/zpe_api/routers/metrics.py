"""``GET /metrics``: Prometheus text format (see ``zpe_core.metrics`` for what is in it)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from zpe_api.deps import get_app_settings, get_store
from zpe_core.metrics import CONTENT_TYPE_LATEST, MetricsExporter

router = APIRouter(tags=["health"])


def _exporter(request: Request) -> MetricsExporter:
    store = get_store(request)
    exporter: MetricsExporter | None = getattr(request.app.state, "metrics_exporter", None)
    if exporter is None or exporter.store is not store:
        settings = get_app_settings(request)
        exporter = MetricsExporter(
            store,
            scan_limit=settings.metrics_scan_limit,
            cache_seconds=settings.metrics_cache_seconds,
        )
        request.app.state.metrics_exporter = exporter
    return exporter


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Jobs by state, queue depth, task durations, lease expiries, retries, dead letters,
    dispatch failures and store errors, in the Prometheus text format."""
    body = await run_in_threadpool(_exporter(request).render)
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
