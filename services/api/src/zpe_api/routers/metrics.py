"""``GET /metrics``: Prometheus text format (what is in it: ``zpe_core.observability.metrics``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from zpe_api.deps import AuthorizationHeader, bearer_token, get_app_settings, get_store
from zpe_api.problems import problem_responses
from zpe_core.edge.tokens import check_metrics_token
from zpe_core.observability.exporter import CONTENT_TYPE_LATEST, MetricsExporter

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
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        **problem_responses(401),
    },
)
async def metrics(request: Request, authorization: AuthorizationHeader = None) -> Response:
    """Jobs by state, queue depth, task durations, lease expiries, retries, dead letters,
    dispatch failures and store errors, in the Prometheus text format. With
    ``ZPE_METRICS_TOKEN`` set, a scrape must send it as a bearer token (else 401)."""
    token = get_app_settings(request).metrics_token
    check_metrics_token(
        token.get_secret_value() if token is not None else None, bearer_token(authorization)
    )
    body = await run_in_threadpool(_exporter(request).render)
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
