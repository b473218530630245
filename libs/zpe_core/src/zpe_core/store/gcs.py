"""``gs://bucket/prefix``: a shared store on Google Cloud Storage.

Each record is one object ``<prefix>/records/<key>``; its revision is the
object generation (new on every write, never reused). ``_create`` uploads with
``if_generation_match=0`` and ``_swap`` with ``if_generation_match=<rev>``, so
GCS itself decides every race. ``_list`` is a prefix listing (lexicographic)
with ``start_offset``. Artifacts are objects under ``<prefix>/blobs/``.

When ``STORAGE_EMULATOR_HOST`` is set (tests, local runs) the client talks to
that emulator with anonymous credentials. Requests time out after 10 s and
transient failures are retried for at most a few seconds, so an outage is
answered quickly with ``StoreUnavailable``.

A conditional write that was retried after a lost response may find its own
write already there (412 on the retry); that case is recognised by comparing
the stored bytes with the bytes written and counted as success.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import google.cloud.storage as storage  # not "from google.cloud import": mypy + tasks_v2
import requests
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import GoogleAuthError
from google.cloud.storage.exceptions import InvalidResponse

from zpe_core.errors import AlreadyExists, ConfigurationError, StoreConflict, StoreUnavailable
from zpe_core.store.base import JobStore

R = TypeVar("R")

DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_RETRY_SECONDS = 4.0
EMULATOR_PROJECT = "zpe-local"

_TRANSIENT: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    ConnectionError,
    TimeoutError,
)


_UNAVAILABLE: tuple[type[BaseException], ...] = (gexc.RetryError, GoogleAuthError, *_TRANSIENT)


#: Statuses worth another try. Uploads fail with ``InvalidResponse`` (not an API error)
#: inside the retry, so 429 (about one write per second to one object) needs naming.
_RETRYABLE_STATUS = (408, 429, 500, 502, 503, 504)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, InvalidResponse):
        return getattr(exc.response, "status_code", None) in _RETRYABLE_STATUS
    return isinstance(exc, _TRANSIENT)


class GcsJobStore(JobStore):
    """Records as GCS objects, compare-and-swap by generation preconditions."""

    # Commits read first here (as before the guess existed). The 385-task job behind the
    # one-write-per-second proxy once failed with the guess on, but it failed with the read
    # too: the cause was several finishers elected (``claim_finalizer``), not the guess,
    # whose effect on GCS has not been measured since.
    commit_from_claim = False
    # Every create is an HTTP upload (~20-50 ms to real GCS): a 385-task submission makes
    # ~770 of them. Eight at once stays within the HTTP session's pool of ten connections.
    create_concurrency = 8

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: storage.Client | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        **kwargs: int,
    ) -> None:
        """Open ``bucket``; keys live under ``prefix``. Makes no request."""
        super().__init__(**kwargs)
        if not bucket:
            raise ConfigurationError("gs:// store URL needs a bucket, e.g. gs://my-bucket/zpe")
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        base = f"{self.prefix}/" if self.prefix else ""
        self._records = f"{base}records/"
        self._blobs = f"{base}blobs/"
        self.timeout = timeout_seconds
        self.retry_seconds = retry_seconds
        self.display = f"gcs store gs://{bucket}/{self.prefix}".rstrip("/")
        if client is None:
            try:
                if os.environ.get("STORAGE_EMULATOR_HOST"):
                    client = storage.Client(
                        project=os.environ.get("GOOGLE_CLOUD_PROJECT", EMULATOR_PROJECT),
                        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                    )
                else:
                    client = storage.Client()
            except GoogleAuthError as exc:
                raise StoreUnavailable(f"{self.display}: no usable credentials: {exc}") from None
        self.client = client
        self.bucket = client.bucket(bucket)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> GcsJobStore:
        """Open ``gs://bucket/prefix``."""
        parts = urlsplit(url)
        if parts.scheme != "gs":
            raise ConfigurationError(f"not a gs:// URL: {url!r}")
        return cls(parts.netloc, parts.path, **kwargs)

    # ------------------------------------------------------------------ plumbing

    def _retry(self, seen: list[BaseException] | None = None) -> Retry:
        return Retry(
            predicate=_transient,
            initial=0.05,
            maximum=1.0,
            multiplier=2.0,
            timeout=self.retry_seconds,
            on_error=seen.append if seen is not None else None,
        )

    def _call(self, what: str, fn: Callable[[], R]) -> R:
        try:
            return fn()
        except _UNAVAILABLE as exc:
            cause = exc.cause if isinstance(exc, gexc.RetryError) and exc.cause else exc
            reason = f"{type(cause).__name__}: {cause}"
            if len(reason) > 300:
                reason = reason[:300] + "..."
            raise StoreUnavailable(f"{self.display} unavailable during {what}: {reason}") from None
        except gexc.GoogleAPICallError as exc:
            if isinstance(exc, gexc.PreconditionFailed | gexc.NotFound):
                raise
            code = getattr(exc, "code", None)
            if isinstance(code, int) and code >= 500:
                raise StoreUnavailable(f"{self.display} unavailable during {what}: {exc}") from None
            raise StoreUnavailable(
                f"{self.display} refused {what}: {type(exc).__name__}: {exc}"
            ) from None

    def _upload(self, name: str, value: bytes, generation: int | None) -> int:
        """Upload (conditionally); return the new generation or raise ``PreconditionFailed``."""
        blob = self.bucket.blob(name)
        seen: list[BaseException] = []
        try:
            self._call(
                "write",
                lambda: blob.upload_from_string(
                    value,
                    content_type="application/octet-stream",
                    if_generation_match=generation,
                    timeout=self.timeout,
                    retry=self._retry(seen),
                    checksum=None,
                ),
            )
        except (gexc.PreconditionFailed, gexc.NotFound):
            if seen:  # a retried write may have landed the first time
                found = self._download(name)
                if found is not None and found[0] == value:
                    return found[1]
            raise
        return int(blob.generation)

    def _download(self, name: str) -> tuple[bytes, int] | None:
        blob = self.bucket.blob(name)
        try:
            data = self._call(
                "read",
                lambda: blob.download_as_bytes(
                    timeout=self.timeout, retry=self._retry(), checksum=None
                ),
            )
        except gexc.NotFound:
            return None
        return bytes(data), int(blob.generation)

    # ------------------------------------------------------------------ primitives

    def _create(self, key: str, value: bytes) -> int:
        try:
            return self._upload(self._records + key, value, 0)
        except (gexc.PreconditionFailed, gexc.NotFound):
            raise AlreadyExists(key) from None

    def _read(self, key: str) -> tuple[bytes, int] | None:
        return self._download(self._records + key)

    def _swap(self, key: str, value: bytes, expected_rev: int) -> int:
        try:
            return self._upload(self._records + key, value, expected_rev)
        except (gexc.PreconditionFailed, gexc.NotFound):
            raise StoreConflict(key) from None

    def _delete(self, key: str) -> None:
        blob = self.bucket.blob(self._records + key)
        with contextlib.suppress(gexc.NotFound):
            self._call("delete", lambda: blob.delete(timeout=self.timeout, retry=self._retry()))

    def _list(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> list[str]:
        if limit <= 0:
            return []
        full_prefix = self._records + prefix
        start = self._records + start_after if start_after and start_after >= prefix else None

        def run() -> list[str]:
            out: list[str] = []
            blobs = self.client.list_blobs(
                self.bucket,
                prefix=full_prefix,
                start_offset=start,
                max_results=limit + 1,
                page_size=min(limit + 1, 1000),
                fields="items(name),nextPageToken",
                timeout=self.timeout,
                retry=self._retry(),
            )
            for blob in blobs:
                name: str = blob.name
                if start is not None and name <= start:  # start_offset is inclusive
                    continue
                out.append(name[len(self._records) :])
                if len(out) >= limit:
                    break
            return out

        try:
            return self._call("list", run)
        except gexc.NotFound:  # a listing finds no bucket: an outage with a reason, not a 500
            raise StoreUnavailable(f"{self.display}: bucket {self.bucket_name} not found") from None

    def _put_blob(self, key: str, data: bytes) -> None:
        self._upload(self._blobs + key, data, None)

    def _get_blob(self, key: str) -> bytes | None:
        found = self._download(self._blobs + key)
        return None if found is None else found[0]

    def ping(self) -> None:
        def run() -> None:
            blobs = self.client.list_blobs(
                self.bucket,
                prefix=self._records,
                max_results=1,
                timeout=self.timeout,
                retry=self._retry(),
            )
            for _ in blobs:
                break

        try:
            self._call("ping", run)
        except gexc.NotFound:
            raise StoreUnavailable(f"{self.display}: bucket {self.bucket_name} not found") from None

    def close(self) -> None:
        http = getattr(self.client, "_http_internal", None)
        if http is not None:
            http.close()
