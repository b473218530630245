"""Dispatcher backends, chosen by ``ZPE_EXECUTION_MODE``."""

from zpe_core.dispatch.base import DispatchError, JobDispatcher, PullDispatcher
from zpe_core.dispatch.inprocess import InProcessDispatcher

__all__ = ["DispatchError", "InProcessDispatcher", "JobDispatcher", "PullDispatcher"]
