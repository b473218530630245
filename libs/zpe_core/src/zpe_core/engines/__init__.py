"""Engines compute energy and forces for one task; chosen by name at the edge."""

from __future__ import annotations

from pathlib import Path

from zpe_core.engines.base import Engine
from zpe_core.errors import ConfigurationError
from zpe_core.settings import ComputeSettings

ENGINE_NAMES = ("qe", "mock")

__all__ = ["ENGINE_NAMES", "Engine", "get_engine"]


def get_engine(name: str, settings: ComputeSettings) -> Engine:
    """The engine called ``name``, configured from ``settings``.

    Does not check ``settings.engines`` (the allowed list): callers that take
    the name from users do that and answer with an input error.
    """
    if name == "mock":
        from zpe_core.engines.mock import MockEngine

        return MockEngine(
            delay_seconds=settings.mock_delay_seconds,
            timeout_seconds=settings.task_timeout_seconds,
        )
    if name == "qe":
        # Imported here so processes that never run pw.x do not load ASE's calculator stack.
        from zpe_core.engines.qe import QeEngine, WarmStartCache, default_warm_start_dir

        warm_start_cache = None
        if settings.warm_start:
            warm_start_cache = WarmStartCache(
                Path(settings.warm_start_dir)
                if settings.warm_start_dir
                else default_warm_start_dir(settings.scratch_dir),
                settings.warm_start_cache_entries,
            )
        return QeEngine(
            pw_command=settings.pw_command,
            pseudo_dir=settings.pseudo_dir,
            timeout_seconds=settings.task_timeout_seconds,
            version=settings.qe_version,
            warm_start_cache=warm_start_cache,
            shipped_state_max_bytes=settings.warm_start_share_max_bytes,
            limits=settings.input_limits,
            max_memory_mb=settings.pw_max_memory_mb,
            max_file_mb=settings.pw_max_file_mb,
        )
    raise ConfigurationError(
        f"unknown engine {name!r}; known engines: {', '.join(ENGINE_NAMES)}",
        code="unknown_engine",
    )
