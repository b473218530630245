"""Compute servers of the ``http-pull`` mode: tokens, enrollment, switches.

The trust chain is admin -> server -> worker:

* an admin (bearer ``ZPE_ADMIN_TOKEN``; with none configured the admin
  endpoints are *closed*) issues a short-lived, single-use **enroll token**;
* a compute server presents it once to register itself and receives a
  **worker token** (expires, renewable before expiry, revocable at once);
* every worker call carries the worker token; the store never leaves the
  control plane.

Tokens are ``zpe_<kind>_<id>_<secret>``: the id finds the record, and only the
SHA-256 digest of the whole token is stored, compared in constant time. The
secret has 256 random bits, so a fast hash is enough (nothing to brute-force).

Everything lives in the store's documents (``meta/...``): enroll tokens,
server records, the operations switches and their audit trail.
"""

from __future__ import annotations

import contextlib
import re
import secrets

from pydantic import BaseModel, Field

from zpe_client.compute import Capabilities, Switch, SwitchChange
from zpe_core.control.revocation import Revocable, revoke
from zpe_core.edge.tokens import (
    digest_matches,
    new_token,
    secret_matches,
    split_token,
    token_digest,
)
from zpe_core.errors import (
    AlreadyExists,
    Forbidden,
    NotFound,
    SwitchedOff,
    Unauthorized,
)
from zpe_core.jobs.models import DEFAULT_TARGET, now
from zpe_core.jobs.targets import TargetAccess
from zpe_core.settings import ApiSettings
from zpe_core.store.base import JobStore

ENROLL_PREFIX = "zpe_enroll_"
WORKER_PREFIX = "zpe_worker_"
#: How long the previous worker token keeps working after a renewal (lost-response safety).
RENEWAL_GRACE_SECONDS = 300.0
#: ``last_seen_at`` is written at most this often per server.
TOUCH_INTERVAL_SECONDS = 5.0

_ID = re.compile(r"^[a-f0-9]{16,40}$")
_SERVER_ID = re.compile(r"^s[a-f0-9]{16}$")

# ---------------------------------------------------------------------- token primitives
# They live in ``zpe_core.edge.tokens`` (shared with user API keys); re-exported here.

_new_token = new_token
_split_token = split_token


# ---------------------------------------------------------------------- records


class EnrollToken(BaseModel):
    """A stored enroll token (its digest, never the token)."""

    token_id: str
    digest: str
    targets: list[str]
    created_at: float
    expires_at: float
    created_by: str
    note: str | None = None
    used_at: float | None = None
    used_by: str | None = None


class ComputeServer(Revocable):
    """A registered compute server and the digest of its current worker token."""

    server_id: str
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    targets: list[str]
    capabilities: Capabilities
    created_at: float
    enrolled_with: str
    token_digest: str
    token_issued_at: float
    token_expires_at: float
    previous_token_digest: str | None = None
    previous_token_valid_until: float | None = None
    last_seen_at: float | None = None
    leases: dict[str, int] = Field(
        default_factory=dict, description="task id -> lease epoch it was given (pruned on read)."
    )
    tasks_done: int = 0
    tasks_failed: int = 0


class Switches(BaseModel):
    """Operations switches: off means submissions answer 503 / leases answer 204."""

    submission_enabled: bool = True
    dequeue_enabled: bool = True
    version: int = 0
    updated_at: float | None = None
    updated_by: str | None = None
    reason: str | None = None


def _check_usable(record: EnrollToken) -> None:
    if record.used_at is not None:
        raise Unauthorized(
            "the enroll token was already used; ask for a new one", code="enroll_token_used"
        )
    if record.expires_at <= now():
        raise Unauthorized(
            "the enroll token has expired; ask for a new one", code="enroll_token_expired"
        )


# ---------------------------------------------------------------------- admin check


def check_admin(settings: ApiSettings, presented: str | None) -> None:
    """Raise unless ``presented`` is the configured admin token. Fails closed."""
    configured = settings.admin_token.get_secret_value() if settings.admin_token else ""
    if not configured:
        raise Forbidden(
            "admin endpoints are closed: ZPE_ADMIN_TOKEN is not configured",
            code="admin_disabled",
        )
    if not presented:
        raise Unauthorized("an admin bearer token is required", code="admin_token_required")
    if not secret_matches(presented, configured):
        raise Unauthorized("the admin token is not valid", code="invalid_token")


# ---------------------------------------------------------------------- registry


class ComputeRegistry:
    """Enroll tokens, compute servers, worker tokens and switches on a ``JobStore``."""

    def __init__(self, store: JobStore, settings: ApiSettings) -> None:
        self.store = store
        self.settings = settings

    # -------------------------------------------------------------- enroll tokens

    def issue_enroll_token(
        self,
        *,
        targets: list[str] | None = None,
        ttl_seconds: float | None = None,
        note: str | None = None,
        actor: str = "admin",
    ) -> tuple[str, EnrollToken]:
        """A new single-use enroll token; returns ``(token, record)``. Only the digest is kept."""
        ttl = ttl_seconds if ttl_seconds is not None else self.settings.enroll_token_ttl_seconds
        token_id = secrets.token_hex(8)
        token = _new_token(ENROLL_PREFIX, token_id)
        t = now()
        record = EnrollToken(
            token_id=token_id,
            digest=token_digest(token),
            targets=sorted(set(targets or [DEFAULT_TARGET])),
            created_at=t,
            expires_at=t + ttl,
            created_by=actor,
            note=note,
        )
        self.store.create_document(f"enroll-tokens/{token_id}", record)
        return token, record

    def _valid_enroll_token(self, token: str) -> EnrollToken:
        """The record of a genuine, unused, unexpired enroll token (nothing is consumed)."""
        token_id = _split_token(token, ENROLL_PREFIX)
        invalid = Unauthorized("the enroll token is not valid", code="invalid_enroll_token")
        if token_id is None or not _ID.match(token_id):
            raise invalid
        found = self.store.get_document(f"enroll-tokens/{token_id}", EnrollToken)
        if found is None or not digest_matches(token, found.value.digest):
            raise invalid
        _check_usable(found.value)
        return found.value

    def _consume_enroll_token(self, token_id: str, server_id: str) -> EnrollToken:
        def change(record: EnrollToken) -> EnrollToken:
            _check_usable(record)
            record.used_at = now()
            record.used_by = server_id
            return record

        # Compare-and-swap: of two concurrent enrollments with one token, exactly one wins.
        return self.store.mutate_document(f"enroll-tokens/{token_id}", EnrollToken, change).value

    # -------------------------------------------------------------- servers

    def enroll(
        self,
        enroll_token: str,
        *,
        name: str,
        labels: dict[str, str] | None = None,
        targets: list[str] | None = None,
        capabilities: Capabilities | None = None,
    ) -> tuple[ComputeServer, str]:
        """Register a server with an enroll token; returns ``(server, worker_token)``."""
        server_id = "s" + secrets.token_hex(8)
        record = self._valid_enroll_token(enroll_token)
        wanted = sorted(set(targets)) if targets else record.targets
        not_allowed = [t for t in wanted if t not in record.targets]
        if not_allowed:
            raise Forbidden(
                f"this enroll token does not allow targets {not_allowed}; "
                f"it allows {record.targets}",
                code="target_not_allowed",
            )
        record = self._consume_enroll_token(record.token_id, server_id)
        token = _new_token(WORKER_PREFIX, server_id)
        t = now()
        server = ComputeServer(
            server_id=server_id,
            name=name,
            labels=labels or {},
            targets=wanted,
            capabilities=capabilities or Capabilities(),
            created_at=t,
            enrolled_with=record.token_id,
            token_digest=token_digest(token),
            token_issued_at=t,
            token_expires_at=t + self.settings.worker_token_ttl_seconds,
            last_seen_at=t,
        )
        self.store.create_document(f"servers/{server_id}", server)
        return server, token

    def authenticate(self, token: str | None) -> ComputeServer:
        """The server a worker token belongs to; ``Unauthorized`` if forged, expired, revoked."""
        if not token:
            raise Unauthorized("a worker bearer token is required", code="worker_token_required")
        invalid = Unauthorized("the worker token is not valid", code="invalid_token")
        server_id = _split_token(token, WORKER_PREFIX)
        if server_id is None or not _SERVER_ID.match(server_id):
            raise invalid
        found = self.store.get_document(f"servers/{server_id}", ComputeServer)
        if found is None:
            raise invalid
        server = found.value
        t = now()
        if digest_matches(token, server.token_digest):
            expires_at = server.token_expires_at
        elif (
            server.previous_token_digest is not None
            and server.previous_token_valid_until is not None
            and digest_matches(token, server.previous_token_digest)
        ):
            expires_at = server.previous_token_valid_until
        else:
            raise invalid
        if server.revoked:
            raise Unauthorized("this compute server was revoked", code="server_revoked")
        if expires_at <= t:
            raise Unauthorized(
                "the worker token has expired; enroll the server again", code="token_expired"
            )
        return server

    def renew_token(self, server_id: str) -> tuple[ComputeServer, str]:
        """A fresh worker token for an authenticated server; the old one works a little longer."""
        token = _new_token(WORKER_PREFIX, server_id)

        def change(server: ComputeServer) -> ComputeServer:
            if server.revoked:
                raise Unauthorized("this compute server was revoked", code="server_revoked")
            t = now()
            server.previous_token_digest = server.token_digest
            server.previous_token_valid_until = min(
                server.token_expires_at, t + RENEWAL_GRACE_SECONDS
            )
            server.token_digest = token_digest(token)
            server.token_issued_at = t
            server.token_expires_at = t + self.settings.worker_token_ttl_seconds
            return server

        server = self.store.mutate_document(f"servers/{server_id}", ComputeServer, change).value
        return server, token

    def get_server(self, server_id: str) -> ComputeServer:
        found = None
        if _SERVER_ID.match(server_id):
            found = self.store.get_document(f"servers/{server_id}", ComputeServer)
        if found is None:
            raise NotFound(f"compute server {server_id} not found")
        return found.value

    def list_servers(self) -> list[ComputeServer]:
        servers = self.store.read_documents(self.store.list_documents("servers/"), ComputeServer)
        return sorted(servers, key=lambda s: s.created_at)

    def served_targets(self) -> set[str]:
        """Targets that a registered compute server (not revoked, token valid) serves."""
        t = now()
        return {
            target
            for server in self.list_servers()
            if not server.revoked and server.token_expires_at > t
            for target in server.targets
        }

    def target_open_to(self, owner: str, target: str) -> bool:
        """Whether ``owner`` may send jobs to ``target`` (``ZPE_TARGET_OWNERS``)."""
        return TargetAccess(self.settings).open_to(owner, target)

    def check_target(self, owner: str, target: str) -> None:
        """Refuse a job's target unless ``ZPE_TARGETS`` names it or a registered server
        serves it, and it is open to ``owner`` (``TargetAccess.check``)."""
        TargetAccess(self.settings, self.served_targets).check(owner, target)

    def revoke(self, server_id: str, *, actor: str = "admin") -> ComputeServer:
        """Revoke a server's tokens at once (idempotent)."""
        self.get_server(server_id)
        return revoke(self.store, f"servers/{server_id}", ComputeServer, actor=actor)

    def touch(self, server_id: str, capabilities: Capabilities | None = None) -> None:
        """Record that the server was seen (throttled) and its current capabilities."""

        def change(server: ComputeServer) -> ComputeServer | None:
            t = now()
            fresh = server.last_seen_at is not None and t - server.last_seen_at < (
                TOUCH_INTERVAL_SECONDS
            )
            if fresh and (capabilities is None or capabilities == server.capabilities):
                return None
            server.last_seen_at = t
            if capabilities is not None:
                server.capabilities = capabilities
            return server

        self.store.mutate_document(f"servers/{server_id}", ComputeServer, change)

    def note_lease(self, server_id: str, task_id: str, epoch: int | None) -> None:
        """Remember (``epoch``) or forget (``None``) a lease held by the server."""

        def change(server: ComputeServer) -> ComputeServer | None:
            if epoch is None:
                if task_id not in server.leases:
                    return None
                del server.leases[task_id]
            else:
                server.leases[task_id] = epoch
            server.last_seen_at = now()
            return server

        self.store.mutate_document(f"servers/{server_id}", ComputeServer, change)

    def count_outcome(self, server_id: str, task_id: str, *, done: bool) -> None:
        """Forget the lease and count a finished (``done``) or failed task."""

        def change(server: ComputeServer) -> ComputeServer:
            server.leases.pop(task_id, None)
            if done:
                server.tasks_done += 1
            else:
                server.tasks_failed += 1
            server.last_seen_at = now()
            return server

        self.store.mutate_document(f"servers/{server_id}", ComputeServer, change)

    # -------------------------------------------------------------- switches

    def switches(self) -> Switches:
        found = self.store.get_document("switches/current", Switches)
        return found.value if found is not None else Switches()

    def set_switches(
        self, changes: dict[Switch, bool], *, actor: str, reason: str | None = None
    ) -> Switches:
        """Change switches durably and append one audit entry per switch that moved."""
        with contextlib.suppress(AlreadyExists):
            self.store.create_document("switches/current", Switches())
        moved: list[tuple[Switch, bool, bool]] = []

        def change(current: Switches) -> Switches | None:
            moved.clear()  # a lost compare-and-swap retries this function
            for name, value in changes.items():
                old = bool(getattr(current, name))
                if old != value:
                    moved.append((name, old, value))
                    setattr(current, name, value)
            if not moved:
                return None
            current.version += 1
            current.updated_at = now()
            current.updated_by = actor
            current.reason = reason
            return current

        updated = self.store.mutate_document("switches/current", Switches, change).value
        for index, (name, old, new) in enumerate(moved):
            entry = SwitchChange(
                at=updated.updated_at or now(),
                actor=actor,
                switch=name,
                old=old,
                new=new,
                reason=reason,
            )
            # Keyed by the version the compare-and-swap gave this change: the order is exact.
            with contextlib.suppress(AlreadyExists):
                self.store.create_document(f"switches-audit/{updated.version:012d}-{index}", entry)
        return updated

    def switch_audit(self, limit: int = 100) -> list[SwitchChange]:
        """The newest ``limit`` switch changes, newest first."""
        keys = self.store.list_documents("switches-audit/")
        newest = reversed(keys[max(0, len(keys) - limit) :])
        return self.store.read_documents(newest, SwitchChange)

    def require_submission_enabled(self) -> None:
        """Raise ``SwitchedOff`` (503) while submissions are switched off."""
        switches = self.switches()
        if not switches.submission_enabled:
            why = f": {switches.reason}" if switches.reason else ""
            raise SwitchedOff(
                f"job submission is switched off by an operator{why}",
                code="submission_disabled",
            )
