"""The admin API (``/calc/zpe/admin``): dead letters and operations switches.

Every endpoint needs the admin bearer token; with ``ZPE_ADMIN_TOKEN`` unset
they answer 403 (closed), never open.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query

from zpe_api.deps import AdminDep, CoordinatorDep, RegistryDep, StoreDep
from zpe_client.compute import (
    DeadLetter,
    DeadLetterList,
    Requeued,
    RequeueRequest,
    Switch,
    SwitchesUpdate,
    SwitchesView,
)
from zpe_core.control.compute_servers import ComputeRegistry
from zpe_core.jobs.models import Task

router = APIRouter(prefix="/calc/zpe/admin", tags=["admin"])


def dead_letter(task: Task) -> DeadLetter:
    """A dead-lettered task as admins see it."""
    return DeadLetter(
        task_id=task.task_id,
        state=task.state.value,
        attempts=task.attempts,
        engine=task.spec.engine,
        engine_version=task.spec.engine_version,
        natoms=len(task.spec.symbols),
        targets=task.targets,
        job_ids=task.subscribers,
        error=task.error,
        history=task.history,
        updated_at=task.updated_at,
    )


@router.get("/dead-letters", response_model=DeadLetterList)
def list_dead_letters(_: AdminDep, store: StoreDep) -> DeadLetterList:
    """Tasks that failed for good, with every attempt (who, when, how it ended, why)."""
    tasks = sorted(store.dead_letters(), key=lambda t: t.updated_at, reverse=True)
    return DeadLetterList(dead_letters=[dead_letter(task) for task in tasks])


@router.post("/dead-letters/{task_id}/requeue", response_model=Requeued)
def requeue_dead_letter(
    task_id: str,
    _: AdminDep,
    coordinator: CoordinatorDep,
    body: Annotated[RequeueRequest | None, Body()] = None,
) -> Requeued:
    """Put a dead letter back in the queue with fresh attempts; by default the jobs it
    failed are submitted again (as new jobs that reuse every finished task)."""
    options = body or RequeueRequest()
    task, resubmitted = coordinator.requeue_dead_letter(
        task_id, resubmit_jobs=options.resubmit_jobs
    )
    return Requeued(task_id=task.task_id, state=task.state.value, resubmitted_jobs=resubmitted)


def _view(registry: ComputeRegistry, limit: int) -> SwitchesView:
    shown = registry.switches().model_dump(include=set(SwitchesView.model_fields))
    return SwitchesView(**shown, audit=registry.switch_audit(limit))


@router.get("/switches", response_model=SwitchesView)
def get_switches(
    _: AdminDep,
    registry: RegistryDep,
    audit_limit: Annotated[int, Query(ge=0, le=1000)] = 50,
) -> SwitchesView:
    """The operations switches and their newest changes (who, when, old, new, why)."""
    return _view(registry, audit_limit)


@router.put("/switches", response_model=SwitchesView)
def put_switches(body: SwitchesUpdate, _: AdminDep, registry: RegistryDep) -> SwitchesView:
    """Turn ``submission_enabled`` / ``dequeue_enabled`` on or off (durable, audited)."""
    changes: dict[Switch, bool] = {}
    if body.submission_enabled is not None:
        changes["submission_enabled"] = body.submission_enabled
    if body.dequeue_enabled is not None:
        changes["dequeue_enabled"] = body.dequeue_enabled
    registry.set_switches(changes, actor=body.actor, reason=body.reason)
    return _view(registry, 50)
