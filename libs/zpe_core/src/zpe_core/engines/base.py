"""The engine port: compute energy and forces for one task."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from zpe_client.models import TaskResult, TaskSpec

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

    # Warm starts across machines: a displaced point's SCF may start from its reference's
    # converged density computed elsewhere. Engines without warm starts keep these.

    def needs_reference_density(self, spec: TaskSpec) -> bool:
        """Whether ``spec`` would start warm if this machine had its reference's density."""
        return False

    def export_reference_density(self, spec: TaskSpec) -> bytes | None:
        """The converged density (restart files) of reference ``spec`` computed here, packed."""
        return None

    def import_reference_density(self, spec: TaskSpec, blob: bytes) -> bool:
        """Keep another machine's packed density of ``spec``'s reference; False if refused."""
        return False
