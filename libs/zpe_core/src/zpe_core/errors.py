"""Error types shared by every layer.

Each error carries a stable ``code`` (clients match on it), a human message and
the ``source`` of the failure. The API maps them to RFC 9457 problem details
(``zpe_core.edge.problems``: one status table); workers map them to retryable
or permanent task failures. Every error class of the core and the services is
defined here (the client package has its own, for what the API answers).
"""

from __future__ import annotations

from zpe_client.models import ErrorSource


class ZpeError(Exception):
    """Base class: a failure with a stable code, a message and a source."""

    code: str = "internal_error"
    source: ErrorSource = ErrorSource.INTERNAL
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        if code is not None:
            self.code = code


class InputError(ZpeError):
    """The user's input is invalid; the message names what is wrong."""

    code = "invalid_input"
    source = ErrorSource.INPUT


class InputTooLarge(InputError):
    """The input (or a part of it) exceeds a configured cap."""

    code = "input_too_large"


class NotFound(ZpeError):
    """The job, task or artifact does not exist (or is not the caller's)."""

    code = "not_found"
    source = ErrorSource.INPUT


class StateConflict(ZpeError):
    """The request does not fit the current state (e.g. result before done)."""

    code = "conflict"
    source = ErrorSource.INPUT


class ConfigurationError(ZpeError):
    """Settings are missing or contradictory."""

    code = "configuration_error"
    source = ErrorSource.CONFIGURATION


#: What a 503 answer says of a store outage. The message itself (file paths, bucket,
#: host names) is logged, never answered.
STORE_UNAVAILABLE_REASON = "the job store is unavailable right now; retry later"


class StoreUnavailable(ZpeError):
    """The job store cannot be reached; callers answer 503 and may retry."""

    code = "store_unavailable"
    source = ErrorSource.STORE
    retryable = True


class AuthUnavailable(ZpeError):
    """Credentials cannot be checked now (e.g. the signing keys are unreachable): 503."""

    code = "auth_unavailable"
    source = ErrorSource.CONFIGURATION
    retryable = True


class StoreConflict(Exception):
    """A compare-and-swap lost a race (the revision moved). Callers re-read and retry."""


class AlreadyExists(Exception):
    """A create-only write found the key present."""


class ArtifactTooLarge(ZpeError):
    """An artifact exceeds the store's size cap."""

    code = "artifact_too_large"
    source = ErrorSource.STORE


class EngineError(ZpeError):
    """A calculation failed. ``retryable`` says whether running it again may help."""

    code = "engine_failed"
    source = ErrorSource.COMPUTE

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        code: str | None = None,
        output_tail: str | None = None,
    ):
        super().__init__(message, code=code, detail=output_tail)
        self.retryable = retryable
        self.output_tail = output_tail


class Unauthorized(ZpeError):
    """No credentials, or credentials that are forged, expired or revoked (401)."""

    code = "unauthorized"
    source = ErrorSource.INPUT


class Forbidden(ZpeError):
    """Valid credentials that may not do this, or an endpoint that is closed (403)."""

    code = "forbidden"
    source = ErrorSource.INPUT


class SwitchedOff(ZpeError):
    """An operations switch turned this off for now (503; the message says which and why)."""

    code = "switched_off"
    source = ErrorSource.CONFIGURATION
    retryable = True


class TooManyRequests(ZpeError):
    """A per-user or per-client limit is reached (429); ``retry_after`` says when to retry."""

    code = "too_many_requests"
    source = ErrorSource.INPUT
    retryable = True

    def __init__(self, message: str, *, retry_after: float, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class DispatchError(ZpeError):
    """A task could not be handed to any worker (after the dispatcher's own retries)."""

    code = "dispatch_failed"
    source = ErrorSource.DISPATCH
    retryable = True


class StaleLease(StateConflict):
    """A heartbeat, result or failure carried a lease that is no longer current."""

    code = "stale_lease"


class TokenRejected(Exception):
    """An ID token is malformed, forged, expired or for another audience."""


class CertsUnavailable(Exception):
    """The signing keys could not be fetched: nothing can be verified now (retry later)."""


class PushAuthError(Exception):
    """A push request is not authenticated (401) or not allowed (403)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ShippedOutdirError(ValueError):
    """A shipped reference outdir is corrupt, too large or holds files it may not."""
