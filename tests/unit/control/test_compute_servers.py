"""Tokens, enrollment, authentication, switches and result validation (no HTTP)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pydantic import SecretStr

from zpe_client.compute import Capabilities
from zpe_client.models import TaskResult, TaskSpec
from zpe_core.control.compute_servers import (
    ENROLL_PREFIX,
    WORKER_PREFIX,
    ComputeRegistry,
    check_admin,
    digest_matches,
    token_digest,
)
from zpe_core.control.pull import server_matches, validate_result
from zpe_core.errors import Forbidden, InputError, SwitchedOff, Unauthorized
from zpe_core.jobs.models import Task
from zpe_core.settings import Settings
from zpe_core.store import open_store


def registry(**overrides: Any) -> ComputeRegistry:
    return ComputeRegistry(open_store("memory://"), Settings(**overrides))


def caps(**engines: str) -> Capabilities:
    return Capabilities(engines=engines)


def test_token_digest_is_sha256_and_compare_is_exact() -> None:
    assert token_digest("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert digest_matches("abc", token_digest("abc"))
    assert not digest_matches("abd", token_digest("abc"))


def test_enroll_token_shape_ttl_and_storage() -> None:
    reg = registry(enroll_token_ttl_seconds=3600)
    token, record = reg.issue_enroll_token(note="rack 3")
    assert token.startswith(ENROLL_PREFIX + record.token_id + "_")
    assert len(token.split("_", 3)[3]) >= 43  # 256 random bits
    assert record.expires_at - record.created_at == pytest.approx(3600)
    assert record.targets == ["default"]
    stored = reg.store.get_document(f"enroll-tokens/{record.token_id}", type(record))
    assert stored is not None and token not in stored.value.model_dump_json()
    assert stored.value.digest == token_digest(token)


def test_enroll_once_then_refused_and_only_one_concurrent_winner() -> None:
    reg = registry()
    token, _ = reg.issue_enroll_token()
    winners: list[str] = []
    refusals: list[str] = []

    def attempt(i: int) -> None:
        try:
            server, _ = reg.enroll(token, name=f"n{i}", capabilities=caps(mock="mock-1"))
            winners.append(server.server_id)
        except Unauthorized as exc:
            refusals.append(exc.code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert refusals == ["enroll_token_used"] * 7
    assert len(reg.list_servers()) == 1


def test_enroll_token_expiry_and_forgery() -> None:
    reg = registry()
    token, _ = reg.issue_enroll_token(ttl_seconds=0.05)
    time.sleep(0.1)
    with pytest.raises(Unauthorized) as expired:
        reg.enroll(token, name="late")
    assert expired.value.code == "enroll_token_expired"
    good, _ = reg.issue_enroll_token()
    for forged in (good[:-1] + ("A" if good[-1] != "A" else "B"), "zpe_enroll_x", "", good + "x"):
        with pytest.raises(Unauthorized) as refused:
            reg.enroll(forged, name="forger")
        assert refused.value.code == "invalid_enroll_token"
    reg.enroll(good, name="ok")


def test_worker_token_authentication_renewal_and_revocation() -> None:
    reg = registry(worker_token_ttl_seconds=60)
    token, _ = reg.issue_enroll_token(targets=["a", "b"])
    server, worker = reg.enroll(token, name="n", targets=["b"])
    assert worker.startswith(WORKER_PREFIX + server.server_id + "_")
    assert server.targets == ["b"]
    assert server.token_digest == token_digest(worker)
    assert reg.authenticate(worker).server_id == server.server_id
    with pytest.raises(Unauthorized):
        reg.authenticate(None)
    with pytest.raises(Unauthorized):
        reg.authenticate(worker[:-2] + "zz")
    renewed, fresh = reg.renew_token(server.server_id)
    assert fresh != worker and renewed.token_expires_at >= server.token_expires_at
    assert reg.authenticate(fresh).server_id == server.server_id
    assert reg.authenticate(worker).server_id == server.server_id  # grace period
    reg.revoke(server.server_id, actor="ops")
    for presented in (fresh, worker):
        with pytest.raises(Unauthorized) as revoked:
            reg.authenticate(presented)
        assert revoked.value.code == "server_revoked"


def test_worker_token_expires() -> None:
    reg = registry(worker_token_ttl_seconds=0.05)
    token, _ = reg.issue_enroll_token()
    _, worker = reg.enroll(token, name="n")
    time.sleep(0.1)
    with pytest.raises(Unauthorized) as expired:
        reg.authenticate(worker)
    assert expired.value.code == "token_expired"


def test_admin_check_fails_closed() -> None:
    with pytest.raises(Forbidden):
        check_admin(Settings(admin_token=None), "anything")
    with pytest.raises(Forbidden):
        check_admin(Settings(admin_token=SecretStr("")), "")
    settings = Settings(admin_token=SecretStr("s3cret-admin"))
    for wrong in (None, "", "s3cret-admiN", "s3cret-admin "):
        with pytest.raises(Unauthorized):
            check_admin(settings, wrong)
    check_admin(settings, "s3cret-admin")
    assert "s3cret-admin" not in repr(settings)


def test_switches_are_durable_and_audited() -> None:
    reg = registry()
    assert reg.switches().submission_enabled and reg.switches().dequeue_enabled
    reg.require_submission_enabled()
    reg.set_switches({"submission_enabled": False}, actor="alice", reason="upgrade")
    reg.set_switches({"submission_enabled": False}, actor="bob")  # no change, no entry
    with pytest.raises(SwitchedOff) as off:
        reg.require_submission_enabled()
    assert "upgrade" in off.value.message
    reg.set_switches({"submission_enabled": True, "dequeue_enabled": False}, actor="carol")
    audit = [(e.actor, e.switch, e.old, e.new) for e in reg.switch_audit()]
    assert audit == [
        ("carol", "dequeue_enabled", True, False),
        ("carol", "submission_enabled", False, True),
        ("alice", "submission_enabled", True, False),
    ]
    assert len(audit) == 3
    again = ComputeRegistry(reg.store, Settings())
    assert again.switches().dequeue_enabled is False


def _task(targets: list[str] | None = None) -> Task:
    spec = TaskSpec(
        engine="mock",
        engine_version="mock-1",
        symbols=["H", "H"],
        positions=[[0, 0, 0], [0, 0, 0.74]],
        cell=[[0, 0, 0]] * 3,
        pbc=[False] * 3,
    )
    return Task(task_id="t1", spec=spec, targets=targets or [])


def test_server_matching_needs_a_target_and_the_exact_engine_version() -> None:
    reg = registry()
    token, _ = reg.issue_enroll_token(targets=["default", "gpu"])
    server, _ = reg.enroll(token, name="n", capabilities=caps(mock="mock-1"))
    assert server_matches(server, _task())  # no target: the default pool
    assert server_matches(server, _task(["gpu"]))
    assert not server_matches(server, _task(["hpc-b"]))
    old = server.model_copy(update={"capabilities": caps(mock="mock-0")})
    assert not server_matches(old, _task())
    assert not server_matches(server.model_copy(update={"capabilities": caps()}), _task())


def test_validate_result_checks_engine_shape_and_finiteness() -> None:
    task = _task()
    good = TaskResult(
        energy_ev=-1.0, forces_ev_per_a=[[0, 0, 0.1], [0, 0, -0.1]], engine="mock",
        engine_version="mock-1",
    )  # fmt: skip
    validate_result(task, good)
    bad = [
        good.model_copy(update={"engine_version": "mock-2"}),
        good.model_copy(update={"forces_ev_per_a": [[0, 0, 0.1]]}),
        good.model_copy(update={"forces_ev_per_a": [[0, 0], [0, 0]]}),
        good.model_copy(update={"energy_ev": float("nan")}),
        good.model_copy(update={"forces_ev_per_a": [[0, 0, float("inf")], [0, 0, 0]]}),
    ]
    codes = []
    for result in bad:
        with pytest.raises(InputError) as refused:
            validate_result(task, result)
        codes.append(refused.value.code)
    assert codes == [
        "result_engine_mismatch",
        "result_shape_mismatch",
        "result_shape_mismatch",
        "result_not_finite",
        "result_not_finite",
    ]
