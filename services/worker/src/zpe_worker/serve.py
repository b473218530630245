"""``zpe-worker serve``: the push endpoint under uvicorn, with a draining shutdown.

On SIGTERM (Cloud Run scales in or redeploys) the app is marked draining
first, so any request that still arrives is answered 503 and nothing new
starts; uvicorn then stops listening and waits up to
``ZPE_WORKER_SHUTDOWN_GRACE_SECONDS`` for running tasks, and the app's
shutdown releases the leases of those that did not finish.
"""

from __future__ import annotations

import threading
from types import FrameType

import uvicorn

from zpe_core.edge.hosts import is_loopback
from zpe_core.errors import ConfigurationError
from zpe_core.settings import PushWorkerSettings
from zpe_worker.app import create_app


class DrainingServer(uvicorn.Server):
    """A uvicorn server that flags the app as draining as soon as a signal arrives."""

    def __init__(self, config: uvicorn.Config, draining: threading.Event) -> None:
        super().__init__(config)
        self._draining = draining

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._draining.set()
        super().handle_exit(sig, frame)


def serve(host: str, port: int, settings: PushWorkerSettings | None = None) -> None:
    """Run the worker app until SIGTERM/SIGINT."""
    settings = settings or PushWorkerSettings()
    if settings.push_shared_secret is not None and not is_loopback(host):
        raise ConfigurationError(
            f"ZPE_PUSH_SHARED_SECRET is set, so the worker listens on loopback only "
            f"(next to the local Cloud Tasks emulator): --host {host} is refused; use "
            "--host 127.0.0.1, or OIDC (ZPE_WORKER_AUDIENCE, ZPE_TASKS_INVOKER_EMAIL) instead",
            code="invalid_setting",
        )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=int(settings.worker_shutdown_grace_seconds),
    )
    DrainingServer(config, app.state.draining).run()
