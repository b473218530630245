"""User API keys: issued and revoked by an admin, stored hashed.

A key is ``zpe_key_<id>_<secret>`` (see ``zpe_core.edge.tokens``); the store keeps
only its digest, under the document ``api-keys/<id>``, with the owner it
authenticates as, a label, and when it was created and revoked. Revocation
takes effect on the next request: every request reads the record.
"""

from __future__ import annotations

import re
import secrets

from zpe_core.control.revocation import Revocable, revoke
from zpe_core.edge.tokens import digest_matches, new_token, split_token, token_digest
from zpe_core.errors import AlreadyExists, NotFound, Unauthorized
from zpe_core.jobs.models import now
from zpe_core.store.base import JobStore

API_KEY_PREFIX = "zpe_key_"
#: Owners are names such as ``alice``, ``team-7`` or ``alice@example.org``.
OWNER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9@._+-]{0,127}$"
_KEY_ID = re.compile(r"^[a-f0-9]{16}$")


class ApiKey(Revocable):
    """A stored API key (its digest, never the key)."""

    key_id: str
    digest: str
    owner: str
    label: str | None = None
    created_at: float
    created_by: str


class ApiKeyRegistry:
    """Issue, list, revoke and check user API keys on a ``JobStore``."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def issue(
        self, owner: str, *, label: str | None = None, actor: str = "admin"
    ) -> tuple[str, ApiKey]:
        """A new key for ``owner``; returns ``(key, record)``. The key is shown only here."""
        for _ in range(5):
            key_id = secrets.token_hex(8)
            key = new_token(API_KEY_PREFIX, key_id)
            record = ApiKey(
                key_id=key_id,
                digest=token_digest(key),
                owner=owner,
                label=label,
                created_at=now(),
                created_by=actor,
            )
            try:
                self.store.create_document(f"api-keys/{key_id}", record)
            except AlreadyExists:  # 64-bit id collision: draw again
                continue
            return key, record
        raise AlreadyExists("could not draw a fresh API key id")

    def list(self) -> list[ApiKey]:
        """Every key record (revoked ones too), oldest first."""
        keys = self.store.read_documents(self.store.list_documents("api-keys/"), ApiKey)
        return sorted(keys, key=lambda k: k.created_at)

    def get(self, key_id: str) -> ApiKey:
        found = None
        if _KEY_ID.match(key_id):
            found = self.store.get_document(f"api-keys/{key_id}", ApiKey)
        if found is None:
            raise NotFound(f"API key {key_id} not found")
        return found.value

    def revoke(self, key_id: str, *, actor: str = "admin") -> ApiKey:
        """Revoke a key at once (idempotent)."""
        self.get(key_id)
        return revoke(self.store, f"api-keys/{key_id}", ApiKey, actor=actor)

    def authenticate(self, key: str) -> ApiKey:
        """The record of a genuine, unrevoked key; ``Unauthorized`` otherwise."""
        invalid = Unauthorized("the API key is not valid", code="invalid_api_key")
        key_id = split_token(key, API_KEY_PREFIX)
        if key_id is None or not _KEY_ID.match(key_id):
            raise invalid
        found = self.store.get_document(f"api-keys/{key_id}", ApiKey)
        if found is None or not digest_matches(key, found.value.digest):
            raise invalid
        if found.value.revoked:
            raise Unauthorized("this API key was revoked", code="api_key_revoked")
        return found.value


#: The one user of ``ZPE_AUTH_MODE=none`` (callers that present no credentials).
ANONYMOUS = "anonymous"
_OWNER = re.compile(OWNER_PATTERN)
#: Identity-Aware Proxy prefixes its identity headers with the identity provider.
_IDENTITY_PREFIXES = ("accounts.google.com:",)


def resolve_owner(
    registry: ApiKeyRegistry,
    *,
    auth_mode: str,
    bearer: str | None,
    authorization_present: bool = False,
    identity: str | None = None,
) -> str:
    """The owner a request acts as, from its credentials (see ``current_owner`` in the API).

    ``bearer`` is the API key presented (``None`` if none); ``identity`` the value
    of the trusted identity header, only when one is configured.
    """
    if bearer is not None:
        return registry.authenticate(bearer).owner
    if authorization_present:
        raise Unauthorized(
            "the Authorization header must be 'Bearer <API key>'", code="invalid_api_key"
        )
    if identity:
        for prefix in _IDENTITY_PREFIXES:
            identity = identity.removeprefix(prefix)
        if not _OWNER.match(identity):
            raise Unauthorized("the identity header is malformed", code="invalid_identity")
        return identity
    if auth_mode == "none":
        return ANONYMOUS
    raise Unauthorized(
        "authentication required: send 'Authorization: Bearer <API key>'",
        code="authentication_required",
    )
