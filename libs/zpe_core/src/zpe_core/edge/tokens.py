"""Bearer-token primitives shared by every kind of token (one concept, one place).

Tokens look like ``zpe_<kind>_<id>_<secret>``: the id finds the stored record,
the secret has 256 random bits, and only the SHA-256 digest of the whole token
is ever stored. With that much entropy a fast hash is enough (nothing to
brute-force); comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from zpe_core.errors import Unauthorized

#: Longest token accepted (anything longer is malformed, not looked up).
MAX_TOKEN_LENGTH = 200


def token_digest(token: str) -> str:
    """SHA-256 hex digest of a token: the only form in which tokens are stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def digest_matches(token: str, digest: str) -> bool:
    """Constant-time comparison of ``token`` with a stored digest."""
    return hmac.compare_digest(token_digest(token), digest)


def secret_matches(presented: str, configured: str) -> bool:
    """Constant-time equality of a presented and a configured secret (of any lengths)."""
    return hmac.compare_digest(token_digest(presented), token_digest(configured))


def new_token(prefix: str, token_id: str) -> str:
    """A fresh ``<prefix><token_id>_<secret>`` with a 256-bit URL-safe secret."""
    return f"{prefix}{token_id}_{secrets.token_urlsafe(32)}"


def split_token(token: str, prefix: str) -> str | None:
    """The id part of ``<prefix><id>_<secret>``, or ``None`` if malformed."""
    if not token.startswith(prefix) or len(token) > MAX_TOKEN_LENGTH:
        return None
    token_id, sep, secret = token[len(prefix) :].partition("_")
    if not sep or len(secret) < 32:
        return None
    return token_id


def check_metrics_token(configured: str | None, presented: str | None) -> None:
    """With ``ZPE_METRICS_TOKEN`` set, refuse (401) a scrape without that bearer token."""
    if configured is None:
        return
    if not presented:
        raise Unauthorized(
            "GET /metrics wants 'Authorization: Bearer <ZPE_METRICS_TOKEN>'",
            code="metrics_token_required",
        )
    if not secret_matches(presented, configured):
        raise Unauthorized("the metrics token is not valid", code="invalid_metrics_token")
