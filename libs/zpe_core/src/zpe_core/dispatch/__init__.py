"""Dispatcher backends, chosen by ``ZPE_EXECUTION_MODE``."""

from zpe_core.dispatch.base import JobDispatcher, PullDispatcher
from zpe_core.dispatch.inprocess import InProcessDispatcher

__all__ = ["InProcessDispatcher", "JobDispatcher", "PullDispatcher"]
