"""Admin: user API keys (``/calc/zpe/admin/api-keys``). A key is shown once, at issue."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from zpe_api.deps import AdminDep, StoreDep
from zpe_api.problems import problem_responses
from zpe_core.control.api_keys import OWNER_PATTERN, ApiKey, ApiKeyRegistry

router = APIRouter(
    prefix="/calc/zpe/admin/api-keys",
    tags=["admin"],
    responses=problem_responses(400, 401, 403, 422, 503),
)


class ApiKeyRequest(BaseModel):
    owner: str = Field(pattern=OWNER_PATTERN, description="The user the key acts as.")
    label: str | None = Field(default=None, max_length=100, description="What the key is for.")


class ApiKeyView(BaseModel):
    """A key's record, without its secret."""

    key_id: str
    owner: str
    label: str | None
    created_at: float
    created_by: str
    revoked_at: float | None
    revoked_by: str | None

    @classmethod
    def of(cls, record: ApiKey) -> ApiKeyView:
        return cls(**record.model_dump(exclude={"digest"}))


class ApiKeyIssued(ApiKeyView):
    key: str = Field(description="The bearer API key. Shown only in this answer; store it.")


class ApiKeyList(BaseModel):
    api_keys: list[ApiKeyView]


@router.post("", status_code=201, response_model=ApiKeyIssued)
def issue_api_key(body: ApiKeyRequest, actor: AdminDep, store: StoreDep) -> ApiKeyIssued:
    """Issue an API key for ``owner`` (only its SHA-256 digest is stored)."""
    key, record = ApiKeyRegistry(store).issue(body.owner, label=body.label, actor=actor)
    return ApiKeyIssued(key=key, **ApiKeyView.of(record).model_dump())


@router.get("", response_model=ApiKeyList)
def list_api_keys(_: AdminDep, store: StoreDep) -> ApiKeyList:
    """Every key (revoked ones too), without secrets."""
    return ApiKeyList(api_keys=[ApiKeyView.of(k) for k in ApiKeyRegistry(store).list()])


@router.delete("/{key_id}", response_model=ApiKeyView, responses=problem_responses(404))
def revoke_api_key(key_id: str, actor: AdminDep, store: StoreDep) -> ApiKeyView:
    """Revoke a key at once: its next request answers 401 (idempotent)."""
    return ApiKeyView.of(ApiKeyRegistry(store).revoke(key_id, actor=actor))
