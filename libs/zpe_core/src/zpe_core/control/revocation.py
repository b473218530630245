"""Revocation of a stored credential (a user API key, a compute server's tokens).

Immediate (every request reads the record), idempotent (a second revoke keeps the
first time and actor), never undone.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

from zpe_core.jobs.models import now
from zpe_core.store.base import JobStore


class Revocable(BaseModel):
    """When and by whom a credential record was revoked (``None``: it is valid)."""

    revoked_at: float | None = None
    revoked_by: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


R = TypeVar("R", bound=Revocable)


def revoke(store: JobStore, key: str, model: type[R], *, actor: str) -> R:
    """Mark the document at ``key`` revoked by ``actor`` unless it already is."""

    def change(record: R) -> R | None:
        if record.revoked:
            return None
        record.revoked_at = now()
        record.revoked_by = actor
        return record

    return store.mutate_document(key, model, change).value
