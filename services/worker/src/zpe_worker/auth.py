"""Authentication of push requests: Google-signed OIDC ID tokens, or a shared secret.

Cloud Tasks attaches an ID token of the invoker service account
(``Authorization: Bearer <jwt>``). It is verified with google-auth against
Google's certificates (cached for their ``Cache-Control`` max-age and
refetched once when a token names an unknown key): signature, ``iat`` and
``exp`` with a small clock skew, ``aud`` = ``ZPE_WORKER_AUDIENCE``, ``iss`` =
accounts.google.com, ``email`` = ``ZPE_TASKS_INVOKER_EMAIL`` and
``email_verified``. The emulator sends no token: for it a shared secret in
``X-ZPE-Push-Secret`` is accepted only when ``ZPE_PUSH_SHARED_SECRET`` is set
next to an emulator on loopback (``check_push_secret``; else the worker refuses
to start), only from a loopback peer, compared in constant time.
"""

from __future__ import annotations

import hmac

from zpe_core.dispatch.cloud_tasks import SECRET_HEADER, check_push_secret
from zpe_core.edge.hosts import is_loopback
from zpe_core.edge.id_tokens import CachingRequest, TokenVerifier
from zpe_core.errors import CertsUnavailable, ConfigurationError, PushAuthError, TokenRejected
from zpe_core.settings import PushWorkerSettings

__all__ = ["SECRET_HEADER", "CachingRequest", "PushAuthenticator"]

GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")


class PushAuthenticator:
    """Decides whether a push request may run a task."""

    def __init__(self, settings: PushWorkerSettings, request: CachingRequest | None = None) -> None:
        self.audience = settings.worker_audience
        self.invoker = settings.tasks_invoker_email
        self.certs_url = settings.oidc_certs_url
        check_push_secret(settings)  # a secret anywhere but next to the emulator: refused
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
                "(the local Cloud Tasks emulator only)",
                code="missing_setting",
            )
        self._verifier = TokenVerifier(self.certs_url, self.audience, request)

    def authenticate(self, headers: dict[str, str], peer: str | None = None) -> str:
        """Return who called (the invoker email or ``shared-secret``); raise ``PushAuthError``.

        ``peer`` is the client address: the shared secret counts only from loopback
        (the emulator runs on this machine; nothing from outside may use it)."""
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer ") and self.oidc_enabled:
            return self.verify_token(authorization[7:].strip())
        supplied = headers.get(SECRET_HEADER.lower())
        if supplied is not None and self._secret is not None:
            if peer is None or not is_loopback(peer):
                raise PushAuthError(
                    401, "secret_not_allowed", "the push secret is accepted only from this machine"
                )
            if hmac.compare_digest(supplied.encode(), self._secret):
                return "shared-secret"
            raise PushAuthError(401, "invalid_credentials", "the push secret is wrong")
        raise PushAuthError(401, "missing_credentials", "push requests must be authenticated")

    def verify_token(self, token: str) -> str:
        """Verify a Google-signed ID token; return the caller's email."""
        try:
            claims = self._verifier.claims(token)
        except TokenRejected as exc:
            raise PushAuthError(401, "invalid_token", str(exc)) from exc
        except CertsUnavailable as exc:  # certificates unreachable: retry later
            raise PushAuthError(503, "auth_unavailable", f"cannot verify ID tokens: {exc}") from exc
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise PushAuthError(401, "invalid_token", "the ID token was not issued by Google")
        email = claims.get("email")
        if email != self.invoker:
            raise PushAuthError(403, "forbidden_caller", f"{email!r} may not push tasks here")
        if claims.get("email_verified") is not True:
            raise PushAuthError(403, "forbidden_caller", "the caller's email is not verified")
        return str(email)
