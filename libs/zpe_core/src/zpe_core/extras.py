"""Optional backends are extras of ``zpe-core``; choosing one without it says which.

``pip install 'zpe-core[redis]'`` (``redis://`` stores), ``[gcs]`` (``gs://``
stores), ``[cloud-tasks]`` (``ZPE_EXECUTION_MODE=cloud-tasks``), ``[metrics]``
(Prometheus; without it the metric hooks count nothing and ``GET /metrics`` is
unavailable). The services' distributions ask for the extras they use.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from zpe_core.errors import ConfigurationError


def missing_extra(module: str, extra: str, what: str) -> ConfigurationError:
    """The error for ``what`` chosen without the package of the extra ``extra``."""
    return ConfigurationError(
        f"{what} needs the Python package {module.split('.')[0]!r}, which is not installed: "
        f"install zpe-core with its {extra!r} extra (pip install 'zpe-core[{extra}]')",
        code="missing_extra",
    )


def require_extra(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module``, or raise ``ConfigurationError`` naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_extra(module, extra, what) from exc
