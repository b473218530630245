"""Google-signed JWTs, verified with google-auth: one verifier for every kind we accept.

Two kinds reach the service: the OIDC ID tokens Cloud Tasks attaches to push
requests (RS256, Google's certificates; ``zpe_worker.auth``) and the assertions
Identity-Aware Proxy signs for every request it lets through (ES256, IAP's
keys; ``zpe_core.edge.iap``). Both are checked by ``google.oauth2.id_token.verify_token``
(signature, ``iat``/``exp`` with a small skew, ``aud``) against keys fetched
from a certificates URL, cached for their ``Cache-Control`` max-age and
refetched at most once a minute when a token names an unknown key id.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import google.auth.transport.requests
from google.auth import exceptions as auth_exceptions
from google.oauth2 import id_token

from zpe_core.errors import CertsUnavailable, TokenRejected

CLOCK_SKEW_SECONDS = 10
_DEFAULT_CERTS_TTL = 300.0
_MAX_CERTS_TTL = 24 * 3600.0
_MAX_AGE = re.compile(r"max-age=(\d+)")


@dataclass
class _Cached:
    response: Any
    expires: float


class CachingRequest(google.auth.transport.Request):
    """A google-auth transport that caches successful GETs (the certificates)."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._inner = google.auth.transport.requests.Request()
        self._timeout = timeout
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # how many requests went out (tests check the cache)

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> Any:
        if method != "GET":
            return self._inner(url, method, body, headers, timeout or self._timeout, **kwargs)
        with self._lock:
            cached = self._cache.get(url)
            if cached is not None and cached.expires > time.monotonic():
                return cached.response
        response = self._inner(url, "GET", None, headers, timeout or self._timeout, **kwargs)
        self.fetches += 1
        if response.status == 200:
            match = _MAX_AGE.search(response.headers.get("cache-control", ""))
            ttl = min(float(match.group(1)), _MAX_CERTS_TTL) if match else _DEFAULT_CERTS_TTL
            with self._lock:
                self._cache[url] = _Cached(response, time.monotonic() + ttl)
        return response


def _invalid(exc: Exception, token: str) -> str:
    """Why a token was refused, without the token itself (google-auth quotes a malformed
    one, and it may be some other credential sent here by mistake)."""
    return "invalid token: " + str(exc).replace(token, "[redacted]")


class TokenVerifier:
    """Verifies JWTs signed by the keys at ``certs_url`` for ``audience``."""

    def __init__(
        self, certs_url: str, audience: str | None, request: CachingRequest | None = None
    ) -> None:
        self.certs_url = certs_url
        self.audience = audience
        self._request = request or CachingRequest()
        self._refetch_lock = threading.Lock()
        self._last_refetch = -60.0

    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims; ``TokenRejected`` or ``CertsUnavailable`` otherwise."""
        try:
            return self._decode(token)
        except ValueError as exc:
            if "not found" not in str(exc) or not self._may_refetch():
                raise TokenRejected(_invalid(exc, token)) from exc
            # A key id we do not know: the keys may have rotated. Refetch once.
            self._request.invalidate()
            try:
                return self._decode(token)
            except ValueError as again:
                raise TokenRejected(_invalid(again, token)) from again
            except auth_exceptions.GoogleAuthError as again:
                raise CertsUnavailable(f"cannot fetch signing keys: {again}") from again
        except auth_exceptions.GoogleAuthError as exc:
            raise CertsUnavailable(f"cannot fetch signing keys: {exc}") from exc

    def _may_refetch(self) -> bool:
        """At most one forced certificate refetch a minute (unknown key ids are cheap to send)."""
        with self._refetch_lock:
            if time.monotonic() - self._last_refetch < 60.0:
                return False
            self._last_refetch = time.monotonic()
            return True

    def _decode(self, token: str) -> dict[str, Any]:
        claims: dict[str, Any] = dict(
            id_token.verify_token(
                token,
                self._request,
                audience=self.audience,
                certs_url=self.certs_url,
                clock_skew_in_seconds=CLOCK_SKEW_SECONDS,
            )
        )
        return claims
