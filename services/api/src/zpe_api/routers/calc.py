"""Before a submission: read an input without creating a job, and the service's options."""

from __future__ import annotations

from fastapi import APIRouter

from zpe_api.deps import SettingsDep
from zpe_core.models import JobRequest
from zpe_core.preview import ClientConfig, InputPreview, client_config, preview_request

router = APIRouter(prefix="/calc/zpe", tags=["calc"])


@router.post("/parse", response_model=InputPreview)
def parse_input(body: JobRequest, settings: SettingsDep) -> InputPreview:
    """Parse a submission (the body of ``POST /calc/zpe/jobs``) and show its structure:
    atoms with fixed flags and the default mobile set, cell, species, k-points and the
    number of SCF tasks. Stores nothing; a bad input answers 422 naming what is wrong."""
    return preview_request(body, settings)


@router.get("/config", response_model=ClientConfig)
def get_config(settings: SettingsDep) -> ClientConfig:
    """Engines offered (and the default), input limits and request defaults."""
    return client_config(settings)
