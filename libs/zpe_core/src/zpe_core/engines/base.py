"""The engine port: compute energy and forces for one task."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from zpe_core.models import TaskResult, TaskSpec

MOCK_VERSION = "mock-1"
"""The mock engine's version; here so the control plane knows it without importing it."""


class Engine(ABC):
    """Computes one point. Implementations raise ``EngineError`` on failure,
    with ``retryable`` set for transient causes (timeouts, crashes of the
    machine) and unset for permanent ones (bad input, no convergence)."""

    name: str

    @abstractmethod
    def version(self) -> str:
        """A string that changes whenever results may change (part of task keys)."""

    @abstractmethod
    def compute(self, spec: TaskSpec, workdir: Path) -> TaskResult:
        """Run the calculation in ``workdir`` (private to this task, removed after)."""
