"""Job store backends, chosen by one URL (``ZPE_STORE_URL``)."""

from __future__ import annotations

from urllib.parse import urlparse

from zpe_core.errors import ConfigurationError, StaleLease
from zpe_core.extras import require_extra
from zpe_core.store.base import JobStore
from zpe_core.store.file import FileJobStore
from zpe_core.store.memory import MemoryJobStore

__all__ = ["FileJobStore", "JobStore", "MemoryJobStore", "StaleLease", "open_store"]


def open_store(url: str, *, max_artifact_bytes: int | None = None) -> JobStore:
    """Open the store a URL names.

    ``file:///abs/path`` (or ``file://relative/path``), ``memory://``,
    ``redis://host:port/db`` (the ``[redis]`` extra), ``gs://bucket/prefix`` (``[gcs]``).
    """
    kwargs = {} if max_artifact_bytes is None else {"max_artifact_bytes": max_artifact_bytes}
    scheme = urlparse(url).scheme
    if scheme == "file":
        path = url[len("file://") :]
        if not path:
            raise ConfigurationError("ZPE_STORE_URL file:// needs a path, e.g. file:///var/zpe")
        return FileJobStore(path, **kwargs)
    if scheme == "memory":
        return MemoryJobStore(**kwargs)
    if scheme in ("redis", "rediss"):
        require_extra("redis", "redis", f"ZPE_STORE_URL={scheme}://")
        from zpe_core.store.redis import RedisJobStore

        return RedisJobStore.from_url(url, **kwargs)
    if scheme == "gs":
        require_extra("google.cloud.storage", "gcs", "ZPE_STORE_URL=gs://")
        from zpe_core.store.gcs import GcsJobStore

        return GcsJobStore.from_url(url, **kwargs)
    raise ConfigurationError(
        f"unsupported ZPE_STORE_URL scheme {scheme!r}: use file://, memory://, redis:// or gs://"
    )
