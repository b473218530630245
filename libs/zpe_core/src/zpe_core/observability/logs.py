"""JSON logging: one object per line, with ``request_id`` / ``job_id`` / ``task_id`` /
``worker_id`` and any other ``extra=`` fields when the caller knows them.

Correlation ids live in context variables (``log_context``): the API's request
middleware binds ``request_id`` (and ``job_id`` for ``/jobs/{id}`` paths), task
runners bind ``task_id`` / ``worker_id`` / ``job_id``, and ``ContextFilter``
copies them onto every record that does not carry them already.

Secrets never reach the output: ``redact`` replaces every registered secret
value (``register_secret``: the admin token, push secret, ...), bearer
credentials, ``Authorization`` values and anything shaped like one of our
tokens (``zpe_<kind>_<id>_<secret>``) with ``[redacted]``. ``RedactingFilter``
applies it to a record's message and fields, and ``JsonFormatter`` once more
to the finished line (tracebacks included).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

REDACTED = "[redacted]"

# ---------------------------------------------------------------------- correlation ids

CONTEXT_FIELDS = ("request_id", "job_id", "task_id", "worker_id")
_VARS: dict[str, ContextVar[str | None]] = {
    name: ContextVar(f"zpe_{name}", default=None) for name in CONTEXT_FIELDS
}


#: The header that carries a request id: accepted and echoed by the API, sent on pushes.
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def valid_request_id(value: str | None) -> str | None:
    """``value`` if it is a usable request id (1-128 safe characters), else ``None``."""
    return value if value is not None and _REQUEST_ID.match(value) else None


def new_request_id() -> str:
    return uuid.uuid4().hex


def current(name: str) -> str | None:
    """The value of one correlation id in this context (``None`` if unbound)."""
    return _VARS[name].get()


def current_request_id() -> str | None:
    return _VARS["request_id"].get()


def bind(**fields: str | None) -> None:
    """Set correlation ids for the rest of this context (no reset; see ``log_context``)."""
    for name, value in fields.items():
        _VARS[name].set(value)


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Bind correlation ids (``request_id``, ``job_id``, ``task_id``, ``worker_id``) inside."""
    tokens = [(_VARS[name], _VARS[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Adds the bound correlation ids to records that do not set them via ``extra=``."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _VARS.items():
            value = var.get()
            if value is not None and getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


# ---------------------------------------------------------------------- secrets

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_MIN_SECRET_LENGTH = 8
_PATTERNS = [
    # Authorization: Bearer xyz / "authorization": "xyz" / authorization=xyz
    re.compile(r"(?i)(\bauthorization\b[\"']?\s*[:=]\s*[\"']?)(?:bearer\s+|basic\s+)?[^\s\"',}]+"),
    # Bearer <credential>: 8+ characters with a digit or punctuation (not "bearer token")
    re.compile(r"(?i)(\bbearer\s+)(?=[A-Za-z]*[0-9._~+/=-])[A-Za-z0-9._~+/=-]{8,}"),
    # our tokens: zpe_<kind>_<id>_<secret>; the kind and id stay readable
    re.compile(r"(\bzpe_[a-z]+_[A-Za-z0-9]+_)[A-Za-z0-9_-]{16,}"),
]


def register_secret(value: str | None) -> None:
    """Make ``redact`` hide ``value`` wherever it appears (short values are ignored)."""
    if value and len(value) >= _MIN_SECRET_LENGTH:
        with _SECRETS_LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with every known secret and credential-shaped value replaced."""
    if _SECRETS:
        with _SECRETS_LOCK:
            secrets = sorted(_SECRETS, key=len, reverse=True)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


class RedactingFilter(logging.Filter):
    """Redacts a record's message and string fields in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the raw message
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and not key.startswith("_") and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


# ---------------------------------------------------------------------- output


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (redacted)."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(payload, default=str))


def json_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing redacted JSON lines with correlation ids to ``stream``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    return handler


def configure_logging(level: str = "INFO") -> None:
    """Send every log line, ours and uvicorn's, to stderr as JSON."""
    handler = json_handler(sys.stderr)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
