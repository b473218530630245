"""Observability: /metrics (Prometheus text), request ids echoed and carried into JSON
logs with job/task/worker ids, and secrets redacted from logs and error bodies."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import make_settings, wait_for
from tests.api.test_jobs_api import assert_problem, submit
from zpe_api.main import create_app
from zpe_client.models import ErrorInfo, ErrorSource, JobRequest, TaskState
from zpe_core import bootstrap
from zpe_core.dispatch.base import JobDispatcher
from zpe_core.errors import DispatchError, StoreUnavailable
from zpe_core.jobs.service import JobService
from zpe_core.observability import metrics
from zpe_core.observability.logs import json_handler, redact, register_secret
from zpe_core.store import open_store
from zpe_core.store.memory import MemoryJobStore


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Every log line of the test, as the JSON the services write."""
    stream = io.StringIO()
    handler = json_handler(stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


# ---------------------------------------------------------------------- /metrics


def test_metrics_change_after_a_job(h2_input: str) -> None:
    settings = make_settings(metrics_cache_seconds=0.0)
    with TestClient(create_app(settings)) as client:
        before = scrape(client)
        assert value(before, "zpe_jobs", state="done") == 0
        assert value(before, "zpe_jobs", state="queued") == 0
        job_id = submit(client, h2_input).json()["job_id"]
        assert wait_for(client, job_id)["state"] == "done"
        after = scrape(client)
    assert value(after, "zpe_jobs", state="done") == 1
    observed = value(after, "zpe_task_duration_seconds_count", engine="mock") - value(
        before, "zpe_task_duration_seconds_count", engine="mock"
    )
    assert observed == 4  # every committed task, once (H2 with symmetry: 4 of 13)
    assert value(after, "zpe_queue_depth") == 0
    for name in (
        "zpe_lease_expiries_total",
        "zpe_task_retries_total",
        "zpe_dead_letters_total",
        "zpe_metrics_scan_truncated",
    ):
        assert (name, ()) in after, name


def test_queue_depth_counts_ready_tasks(idle_client: TestClient, h2_input: str) -> None:
    submit(idle_client, h2_input)
    idle_client.app.state.metrics_exporter = None  # type: ignore[attr-defined]  # no cache
    samples = scrape(idle_client)
    assert value(samples, "zpe_queue_depth") == 4
    assert value(samples, "zpe_jobs", state="queued") == 1


def test_scan_is_bounded(h2_input: str) -> None:
    settings = make_settings(execution_mode="http-pull", metrics_scan_limit=1)
    with TestClient(create_app(settings)) as client:
        submit(client, h2_input)
        submit(client, h2_input, delta=0.02)
        samples = scrape(client)
    assert value(samples, "zpe_metrics_scan_truncated") == 1
    assert value(samples, "zpe_jobs", state="queued") == 1


def test_lease_expiry_retry_and_dead_letter_counters(h2_input: str) -> None:
    service = JobService(open_store("memory://"), None, make_settings(retry_max=2))
    job, _ = service.submit(JobRequest(input_text=h2_input, engine="mock"), owner="a")
    task_id = job.tasks[0].task_id
    expiries, retries = metrics.LEASE_EXPIRIES._value.get(), metrics.RETRIES._value.get()
    dead = metrics.DEAD_LETTERS._value.get()
    assert service.store.claim_task(task_id, "w1", 0.0) is not None  # expires at once
    assert service.reap() == 1
    assert metrics.LEASE_EXPIRIES._value.get() == expiries + 1
    assert metrics.RETRIES._value.get() == retries + 1
    task = service.store.claim_task(task_id, "w2", 60.0, ignore_ready_at=True)
    assert task is not None and task.lease is not None
    failed = service.store.fail_task(
        task_id,
        task.lease.epoch,
        ErrorInfo(code="boom", message="boom", source=ErrorSource.COMPUTE),
        retryable=True,
        policy=service.settings.retry_policy,
    )
    service.task_failed(failed)
    assert failed.state is TaskState.FAILED and failed.dead_letter
    assert metrics.DEAD_LETTERS._value.get() == dead + 1


class _BrokenDispatcher(JobDispatcher):
    name = "broken"

    def dispatch(self, tasks: Any) -> None:
        raise DispatchError("queue unreachable")


def test_dispatch_failures_are_counted(h2_input: str) -> None:
    counter = metrics.DISPATCH_FAILURES.labels(dispatcher="broken")
    before = counter._value.get()
    service = JobService(open_store("memory://"), _BrokenDispatcher(), make_settings())
    job, _ = service.submit(JobRequest(input_text=h2_input, engine="mock"), owner="a")
    assert counter._value.get() == before + 1
    assert service.store.get_job(job.job_id).value.state.value == "failed"  # type: ignore[union-attr]


class FlakyStore(MemoryJobStore):
    down = False

    def _read(self, key: str) -> tuple[bytes, int] | None:
        if self.down:
            raise StoreUnavailable("store is down (test)")
        return super()._read(key)


def test_store_errors_are_counted_by_operation(
    monkeypatch: pytest.MonkeyPatch, h2_input: str
) -> None:
    store = FlakyStore()
    monkeypatch.setattr(bootstrap, "open_job_store", lambda settings: store)
    settings = make_settings(execution_mode="http-pull", metrics_cache_seconds=0.0)
    with TestClient(create_app(settings)) as client:
        job_id = submit(client, h2_input).json()["job_id"]
        before = value(scrape(client), "zpe_store_errors_total", operation="read")
        store.down = True
        assert_problem(client.get(f"/calc/zpe/jobs/{job_id}"), 503, "store_unavailable")
        assert_problem(client.get("/metrics"), 503, "store_unavailable")
        store.down = False
        after = value(scrape(client), "zpe_store_errors_total", operation="read")
    assert after >= before + 2


# ---------------------------------------------------------------------- request ids and logs


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    made = client.get("/healthz").headers["X-Request-ID"]
    assert len(made) == 32 and made != client.get("/healthz").headers["X-Request-ID"]
    hostile = client.get("/healthz", headers={"X-Request-ID": "x" * 300})
    assert hostile.headers["X-Request-ID"] != "x" * 300
    missing = client.get("/calc/zpe/jobs/jnope", headers={"X-Request-ID": "r-404"})
    assert missing.status_code == 404 and missing.headers["X-Request-ID"] == "r-404"


def test_request_id_reaches_the_logs_of_the_job_and_its_tasks(
    client: TestClient, h2_input: str, logs: io.StringIO
) -> None:
    created = submit(client, h2_input, headers={"X-Request-ID": "req-obs-1"})
    assert created.headers["X-Request-ID"] == "req-obs-1"
    job_id = created.json()["job_id"]
    assert wait_for(client, job_id)["state"] == "done"
    records = lines(logs)
    submitted = [r for r in records if r["msg"] == "job submitted"]
    assert submitted and submitted[0]["request_id"] == "req-obs-1"
    assert submitted[0]["job_id"] == job_id
    committed = [r for r in records if r["msg"] == "task committed"]
    assert len(committed) == 4
    for record in committed:
        # Carried through the in-process dispatcher into the worker threads.
        assert record["request_id"] == "req-obs-1"
        assert record["job_id"] == job_id
        assert record["task_id"] and record["worker_id"].startswith("inprocess-")


# ---------------------------------------------------------------------- secrets


def test_redaction_of_secrets_and_credentials() -> None:
    register_secret("s3cr3t-admin-value-xyz")
    text = redact(
        "token s3cr3t-admin-value-xyz; Authorization: Bearer abc.def-123456;"
        ' {"authorization": "Basic dXNlcjpwYXNz"} zpe_key_0123456789abcdef_'
        + "A" * 43
        + " a worker bearer token is required"
    )
    assert "s3cr3t" not in text and "abc.def-123456" not in text
    assert "dXNlcjpwYXNz" not in text and "A" * 43 not in text
    assert "zpe_key_0123456789abcdef_[redacted]" in text  # the id stays for debugging
    assert "a worker bearer token is required" in text  # prose is left alone


def test_logs_never_show_registered_secrets_or_tokens(logs: io.StringIO) -> None:
    register_secret("another-secret-value-42")
    log = logging.getLogger("zpe.test")
    token = "zpe_worker_s0123456789abcdef_" + "B" * 43
    log.info("presented %s", token, extra={"header": "Bearer another-secret-value-42"})
    try:
        raise RuntimeError(f"failed with another-secret-value-42 and {token}")
    except RuntimeError:
        log.exception("boom")
    output = logs.getvalue()
    assert "another-secret-value-42" not in output and "B" * 43 not in output
    assert output.count("[redacted]") >= 4


def test_admin_token_and_keys_stay_out_of_logs_and_errors(logs: io.StringIO, h2_input: str) -> None:
    from pydantic import SecretStr

    admin = "admin-secret-for-log-test-987654"
    settings = make_settings(auth_mode="api-keys", admin_token=SecretStr(admin))
    with TestClient(create_app(settings)) as client:
        issued = client.post(
            "/calc/zpe/admin/api-keys",
            json={"owner": "dave"},
            headers={"Authorization": f"Bearer {admin}"},
        )
        key = issued.json()["key"]
        headers = {"Authorization": f"Bearer {key}"}
        job_id = submit(client, h2_input, headers=headers).json()["job_id"]
        client.headers.update(headers)
        wait_for(client, job_id)
        bad = client.get("/calc/zpe/jobs", headers={"Authorization": f"Bearer {key}x"})
        assert bad.status_code == 401 and key not in bad.text
    output = logs.getvalue()
    assert output  # the run logged
    assert admin not in output and key not in output
