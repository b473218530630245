"""Which targets (pull lanes) a job may name, and who may name them.

A target exists when ``ZPE_TARGETS`` names it or a registered compute server
serves it (``served``: the control plane's registry supplies it; a service
without one knows only the configured targets). ``ZPE_TARGET_OWNERS`` closes
a target to every owner it does not list.
"""

from __future__ import annotations

from collections.abc import Callable

from zpe_core.errors import InputError
from zpe_core.settings import ServiceSettings


def _none_served() -> set[str]:
    return set()


class TargetAccess:
    """Checks a job's target against the configured and the served targets."""

    def __init__(
        self, settings: ServiceSettings, served: Callable[[], set[str]] | None = None
    ) -> None:
        self.settings = settings
        self._served = served or _none_served

    def open_to(self, owner: str, target: str) -> bool:
        """Whether ``owner`` may send jobs to ``target`` (``ZPE_TARGET_OWNERS``)."""
        allowed = self.settings.target_owners.get(target)
        return allowed is None or owner in allowed

    def check(self, owner: str, target: str) -> None:
        """Refuse a job's target unless it exists and is open to ``owner``.

        One answer (422 ``target_unavailable``) for both refusals, so a target that is
        closed to the caller cannot be told from one that does not exist.
        """
        configured = self.settings.configured_targets
        if self.open_to(owner, target) and target in configured:
            return  # the common case reads nothing
        served = self._served()
        if self.open_to(owner, target) and target in served:
            return
        available = sorted(t for t in served | set(configured) if self.open_to(owner, t))
        raise InputError(
            f"target {target!r} is not available to you: no compute server serves it, or it "
            f"is not open to you; targets you may use: {', '.join(available) or 'none'}",
            code="target_unavailable",
        )
