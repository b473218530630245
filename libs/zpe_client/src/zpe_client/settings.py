"""The client's settings: which API, with which key (read here and nowhere else)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_API_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class ClientSettings:
    """``ZPE_API_URL`` (default ``http://127.0.0.1:8000``) and ``ZPE_API_KEY`` (a user's
    bearer API key; none for an API in ``ZPE_AUTH_MODE=none``)."""

    api_url: str = DEFAULT_API_URL
    api_key: str | None = None

    @classmethod
    def load(
        cls,
        api_url: str | None = None,
        api_key: str | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> ClientSettings:
        """Explicit values win over the environment, the environment over the defaults."""
        url = api_url or environ.get("ZPE_API_URL") or DEFAULT_API_URL
        return cls(api_url=url.rstrip("/"), api_key=api_key or environ.get("ZPE_API_KEY") or None)
