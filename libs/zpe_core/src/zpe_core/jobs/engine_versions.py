"""The engine versions that go into task keys, as the control plane knows them
(here, not in ``engines/``: a split control plane never imports engine code).

A task key includes its engine's version, so a planner must know it without
necessarily running the engine: the mock engine's is a constant, the QE
version comes from ``ZPE_QE_VERSION``, and only the embedded ``inprocess``
mode (which runs the engines itself) asks the engine.
"""

from __future__ import annotations

from zpe_core.engines.base import MOCK_VERSION
from zpe_core.errors import ConfigurationError
from zpe_core.settings import ServiceSettings


class EngineVersions:
    """The version of each engine, resolved once per process (cached)."""

    def __init__(self, settings: ServiceSettings, known: dict[str, str] | None = None) -> None:
        self.settings = settings
        self._versions = dict(known or {})

    def of(self, engine: str) -> str:
        """The version that goes into task keys for ``engine``."""
        if engine not in self._versions:
            settings = self.settings
            if engine == "mock":
                self._versions[engine] = MOCK_VERSION
            elif engine == "qe" and settings.qe_version:
                self._versions[engine] = settings.qe_version
            elif settings.execution_mode != "inprocess":
                # The control plane of a split deployment never runs (or imports) an engine.
                raise ConfigurationError(
                    f"set ZPE_QE_VERSION (e.g. qe-7.2, what the workers' pw.x reports) to "
                    f"offer the {engine!r} engine in {settings.execution_mode} mode",
                    code="engine_version_unset",
                )
            else:
                from zpe_core.engines import get_engine

                self._versions[engine] = get_engine(engine, settings).version()
        return self._versions[engine]
