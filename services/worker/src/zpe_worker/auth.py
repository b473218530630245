"""Authentication of push requests: Google-signed OIDC ID tokens, or a shared secret.

Cloud Tasks attaches an ID token of the invoker service account
(``Authorization: Bearer <jwt>``). It is verified with google-auth against
Google's certificates (cached for their ``Cache-Control`` max-age and
refetched once when a token names an unknown key): signature, ``iat`` and
``exp`` with a small clock skew, ``aud`` = ``ZPE_WORKER_AUDIENCE``, ``iss`` =
accounts.google.com, ``email`` = ``ZPE_TASKS_INVOKER_EMAIL`` and
``email_verified``. The emulator sends no token: for it and local runs a
shared secret in ``X-ZPE-Push-Secret`` is accepted only when
``ZPE_PUSH_SHARED_SECRET`` is set, compared in constant time.
"""

from __future__ import annotations

import hmac
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import google.auth.transport.requests
from google.auth import exceptions as auth_exceptions
from google.oauth2 import id_token

from zpe_core.errors import ConfigurationError
from zpe_core.settings import Settings

SECRET_HEADER = "X-ZPE-Push-Secret"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
CLOCK_SKEW_SECONDS = 10
_DEFAULT_CERTS_TTL = 300.0
_MAX_CERTS_TTL = 24 * 3600.0
_MAX_AGE = re.compile(r"max-age=(\d+)")


class AuthError(Exception):
    """A push request is not authenticated (401) or not allowed (403)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


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
    return "invalid ID token: " + str(exc).replace(token, "[redacted]")


class PushAuthenticator:
    """Decides whether a push request may run a task."""

    def __init__(self, settings: Settings, request: CachingRequest | None = None) -> None:
        self.audience = settings.worker_audience
        self.invoker = settings.tasks_invoker_email
        self.certs_url = settings.oidc_certs_url
        secret = settings.push_shared_secret
        self._secret = secret.get_secret_value().encode() if secret is not None else None
        if self._secret is not None and len(self._secret) < 16:
            raise ConfigurationError(
                "ZPE_PUSH_SHARED_SECRET must be at least 16 characters", code="invalid_setting"
            )
        self.oidc_enabled = bool(self.audience and self.invoker)
        if not self.oidc_enabled and self._secret is None:
            raise ConfigurationError(
                "the worker accepts no push request: set ZPE_WORKER_AUDIENCE and "
                "ZPE_TASKS_INVOKER_EMAIL (OIDC from Cloud Tasks), or ZPE_PUSH_SHARED_SECRET "
                "(emulator and local runs)",
                code="missing_setting",
            )
        self._request = request or CachingRequest()
        self._refetch_lock = threading.Lock()
        self._last_refetch = -60.0

    def authenticate(self, headers: dict[str, str]) -> str:
        """Return who called (the invoker email or ``shared-secret``); raise ``AuthError``."""
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer ") and self.oidc_enabled:
            return self.verify_token(authorization[7:].strip())
        supplied = headers.get(SECRET_HEADER.lower())
        if supplied is not None and self._secret is not None:
            if hmac.compare_digest(supplied.encode(), self._secret):
                return "shared-secret"
            raise AuthError(401, "invalid_credentials", "the push secret is wrong")
        raise AuthError(401, "missing_credentials", "push requests must be authenticated")

    def verify_token(self, token: str) -> str:
        """Verify a Google-signed ID token; return the caller's email."""
        try:
            claims = self._decode(token)
        except ValueError as exc:
            if "not found" not in str(exc) or not self._may_refetch():
                raise AuthError(401, "invalid_token", _invalid(exc, token)) from exc
            # A key id we do not know: Google may have rotated its keys. Refetch once.
            self._request.invalidate()
            try:
                claims = self._decode(token)
            except ValueError as again:
                raise AuthError(401, "invalid_token", _invalid(again, token)) from again
        except auth_exceptions.GoogleAuthError as exc:  # certificates unreachable: retry later
            raise AuthError(503, "auth_unavailable", f"cannot verify ID tokens: {exc}") from exc
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise AuthError(401, "invalid_token", "the ID token was not issued by Google")
        email = claims.get("email")
        if email != self.invoker:
            raise AuthError(403, "forbidden_caller", f"{email!r} may not push tasks here")
        if claims.get("email_verified") is not True:
            raise AuthError(403, "forbidden_caller", "the caller's email is not verified")
        return str(email)

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
