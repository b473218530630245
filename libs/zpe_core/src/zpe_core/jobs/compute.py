"""Computing one task with the local engine: the store-free part every worker runs.

``compute_task`` re-checks the spec (the store's record is not trusted), checks
the engine version the task key promises, runs the engine in a private scratch
directory (removed after) and, with ``ReferenceDensities``, brings the reference
point's converged density here first or shares it after. Pull workers use this
without the store (their densities travel through the API); ``runner`` wraps it
with the store's claim, heartbeat and commit.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from zpe_client.models import TaskResult, TaskSpec
from zpe_core.engines import Engine, get_engine
from zpe_core.errors import EngineError, InputError
from zpe_core.physics.namelists import recheck_task_spec, refused_spec
from zpe_core.settings import ComputeSettings

log = logging.getLogger("zpe.runner")


class ReferenceDensities(Protocol):
    """Where a worker gets the converged density of a task's reference point, and shares
    the density of a reference it computed, so workers on other machines start warm."""

    def fetch(self, spec: TaskSpec) -> bytes | None:
        """The packed density of ``spec.reference_key``, or None."""

    def publish(self, spec: TaskSpec, blob: bytes) -> None:
        """Share the packed density of reference ``spec`` (the first one shared stays)."""


def _fetch_reference_density(engine: Engine, spec: TaskSpec, densities: ReferenceDensities) -> None:
    """Before a displaced SCF: bring the reference's density here if it is elsewhere.
    Never fails the task: without the density the SCF starts cold."""
    if not engine.needs_reference_density(spec):
        return
    try:
        blob = densities.fetch(spec)
        if blob is not None and not engine.import_reference_density(spec, blob):
            log.warning("shipped reference density refused; starting cold")
    except Exception as exc:  # a store or network problem only costs the warm start
        log.warning("reference density unavailable: %s", exc)


def _publish_reference_density(
    engine: Engine, spec: TaskSpec, densities: ReferenceDensities
) -> None:
    try:
        blob = engine.export_reference_density(spec)
        if blob is not None:
            densities.publish(spec, blob)
    except Exception as exc:  # the other workers start cold; the result still counts
        log.warning("reference density not shared: %s", exc)


def compute_task(
    spec: TaskSpec,
    settings: ComputeSettings,
    *,
    task_id: str = "",
    densities: ReferenceDensities | None = None,
) -> TaskResult:
    """Run the engine for ``spec`` in a private scratch directory, removed after.

    The spec is checked again first (:func:`~zpe_core.physics.namelists.recheck_task_spec`:
    the store's record is not trusted). With ``densities``: fetch the reference's
    density first (displaced points) or share it after (the reference). Raises
    ``EngineError``; unexpected exceptions
    become retryable engine errors.
    """
    try:
        recheck_task_spec(spec, settings.input_limits)
    except InputError as exc:
        raise refused_spec(exc) from exc
    engine = get_engine(spec.engine, settings)
    if engine.version() != spec.engine_version:
        # The task key promised forces from another version: computing them here would
        # poison the cache. Another worker (or an upgraded one) can take it.
        raise EngineError(
            f"task wants {spec.engine} {spec.engine_version} but this worker has "
            f"{engine.version()}",
            retryable=True,
            code="engine_version_mismatch",
        )
    if densities is not None:
        _fetch_reference_density(engine, spec, densities)
    workdir: Path | None = None
    try:
        # Inside the try: a missing or full scratch directory must end as a reported
        # failure, like any other error of this machine, not kill the caller's thread.
        workdir = Path(
            tempfile.mkdtemp(prefix=f"zpe-{task_id[:14]}-", dir=settings.scratch_dir or None)
        )
        result = engine.compute(spec, workdir)
        if densities is not None:
            _publish_reference_density(engine, spec, densities)
        return result
    except EngineError:
        raise
    except Exception as exc:  # an engine bug or the machine; another attempt may work
        raise EngineError(
            f"{type(exc).__name__} while computing: {exc}", retryable=True, code="engine_error"
        ) from exc
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
