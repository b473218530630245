"""Callers named by Identity-Aware Proxy, believed only on IAP's signature.

IAP sets ``X-Goog-Authenticated-User-Email`` on the requests it lets through,
but so can anyone who reaches the API some other way. What only IAP can make
is ``X-Goog-IAP-JWT-Assertion``: an ES256 JWT signed by IAP's keys
(``ZPE_IAP_CERTS_URL``), for one audience (``ZPE_IAP_AUDIENCE``: the backend
service, ``/projects/NUMBER/global/backendServices/ID``, or the Cloud Run
service, ``/projects/NUMBER/locations/REGION/services/NAME``), issued by
``https://cloud.google.com/iap``. With ``ZPE_TRUSTED_IDENTITY_HEADER`` set the
identity is the verified assertion's ``email`` claim, and nothing else: the
plain header is never read. ``check_identity_settings`` refuses the mode at
start unless the audience is set and the deployment states a non-public
ingress (``ZPE_INGRESS``), so the proxy is the only way in.
"""

from __future__ import annotations

from zpe_core.edge.id_tokens import CachingRequest, TokenVerifier
from zpe_core.errors import (
    AuthUnavailable,
    CertsUnavailable,
    ConfigurationError,
    TokenRejected,
    Unauthorized,
)
from zpe_core.settings import ApiSettings

ASSERTION_HEADER = "X-Goog-IAP-JWT-Assertion"
IAP_ISSUER = "https://cloud.google.com/iap"
#: Ingress values under which only a load balancer (with IAP) or the VPC reaches the API.
PRIVATE_INGRESS = ("internal", "internal-and-cloud-load-balancing")


def check_identity_settings(settings: ApiSettings) -> None:
    """Refuse ``ZPE_TRUSTED_IDENTITY_HEADER`` without IAP's audience or behind a public ingress."""
    if not settings.trusted_identity_header:
        return
    if not settings.iap_audience:
        raise ConfigurationError(
            "ZPE_TRUSTED_IDENTITY_HEADER needs ZPE_IAP_AUDIENCE (the audience of IAP's signed "
            f"{ASSERTION_HEADER}): without it the identity header could be forged",
            code="missing_setting",
        )
    if settings.ingress not in PRIVATE_INGRESS:
        raise ConfigurationError(
            f"ZPE_TRUSTED_IDENTITY_HEADER is refused with ZPE_INGRESS={settings.ingress}: "
            "state the API's ingress as 'internal-and-cloud-load-balancing' (IAP on the load "
            "balancer) or 'internal', so that requests cannot bypass the proxy",
            code="invalid_setting",
        )


class IapVerifier:
    """The caller's email from a verified IAP assertion (``Unauthorized`` otherwise)."""

    def __init__(self, settings: ApiSettings, request: CachingRequest | None = None) -> None:
        check_identity_settings(settings)
        self._verifier = TokenVerifier(settings.iap_certs_url, settings.iap_audience, request)

    def identity(self, assertion: str | None) -> str:
        if not assertion:
            raise Unauthorized(
                f"identity-aware proxy mode: requests must carry IAP's signed {ASSERTION_HEADER}",
                code="iap_assertion_required",
            )
        try:
            claims = self._verifier.claims(assertion.strip())
        except TokenRejected as exc:
            raise Unauthorized(
                f"the IAP assertion is not valid: {exc}", code="invalid_iap_assertion"
            ) from exc
        except CertsUnavailable as exc:
            raise AuthUnavailable(f"cannot verify IAP assertions now: {exc}") from exc
        if claims.get("iss") != IAP_ISSUER:
            raise Unauthorized(
                "the IAP assertion was not issued by IAP", code="invalid_iap_assertion"
            )
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            raise Unauthorized("the IAP assertion names no email", code="invalid_iap_assertion")
        return email
