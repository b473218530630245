"""Before a submission: read an input without creating a job, and the service's options."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from zpe_api.deps import SettingsDep, poll_limit
from zpe_api.problems import problem_responses
from zpe_client.models import JobRequest
from zpe_core.physics.preview import ClientConfig, InputPreview, client_config, preview_request

# Part of the user API: the caller is identified as for jobs (in ``ZPE_AUTH_MODE=api-keys``
# anonymous callers get 401, and a forged or revoked key is refused in every mode), and
# reads count against the caller's polling budget like the job reads (429 past it).
router = APIRouter(
    prefix="/calc/zpe",
    tags=["calc"],
    dependencies=[Depends(poll_limit)],
    responses=problem_responses(401, 429),
)


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
