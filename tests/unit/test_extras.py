"""Backends are extras of zpe-core; choosing one without its package names the extra.

A pull worker installs zpe-core without them; without prometheus-client the
metric hooks count nothing instead of failing.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from zpe_core.bootstrap import build_dispatcher
from zpe_core.errors import ConfigurationError
from zpe_core.settings import Settings
from zpe_core.store import open_store

ROOT = Path(__file__).resolve().parents[2]


def _missing(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for module in modules:  # None in sys.modules: importing it raises ImportError
        monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize(
    ("url", "modules", "extra"),
    [
        ("redis://127.0.0.1:1/0", ["redis"], "redis"),
        ("gs://bucket/prefix", ["google.cloud.storage"], "gcs"),
    ],
)
def test_a_store_without_its_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, url: str, modules: list[str], extra: str
) -> None:
    _missing(monkeypatch, *modules)
    with pytest.raises(ConfigurationError) as caught:
        open_store(url)
    assert caught.value.code == "missing_extra"
    assert f"zpe-core[{extra}]" in caught.value.message


def test_cloud_tasks_without_its_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _missing(monkeypatch, "google.cloud.tasks_v2")
    settings = Settings(execution_mode="cloud-tasks", store_url="memory://")
    with pytest.raises(ConfigurationError) as caught:
        build_dispatcher(settings, open_store("memory://"), lambda task_id, request_id: "")
    assert caught.value.code == "missing_extra"
    assert "zpe-core[cloud-tasks]" in caught.value.message


METRICS_ABSENT = """
import sys
sys.modules["prometheus_client"] = None
from zpe_core.jobs.models import JobRequest
from zpe_core.jobs.service import JobService
from zpe_core.observability import metrics
from zpe_core.settings import Settings
from zpe_core.store import open_store
assert not metrics.ENABLED and metrics.REGISTRY is None
service = JobService(open_store("memory://"), None, Settings(default_engine="mock"))
job, _ = service.submit(JobRequest(input_text=sys.stdin.read(), engine="mock"), owner="o")
metrics.count_store_error("read")
metrics.count_dispatch_failure("x")
service.reap()
try:
    import zpe_core.observability.exporter
except Exception as exc:
    print("EXPORTER", getattr(exc, "code", type(exc).__name__))
print("OK", job.state.value)
"""


def test_metrics_are_no_ops_without_prometheus_client() -> None:
    h2 = (ROOT / "samples" / "h2_zpe.in").read_text()
    done = subprocess.run(
        [sys.executable, "-c", METRICS_ABSENT],
        input=h2,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "EXPORTER missing_extra" in done.stdout
    assert "OK queued" in done.stdout


def _dependencies(path: str) -> tuple[list[str], dict[str, list[str]]]:
    project = tomllib.loads((ROOT / path).read_text())["project"]
    return project["dependencies"], project.get("optional-dependencies", {})


SERVER_ONLY = ("fastapi", "uvicorn", "redis", "google-cloud", "prometheus", "grpc")


def test_the_core_and_the_pull_worker_install_no_server_packages() -> None:
    core, core_extras = _dependencies("libs/zpe_core/pyproject.toml")
    worker, worker_extras = _dependencies("services/worker/pyproject.toml")
    for requirement in core + worker:
        assert not requirement.startswith(SERVER_ONLY), requirement
    assert set(core_extras) == {"redis", "gcs", "cloud-tasks", "metrics"}
    assert any(r.startswith("fastapi") for r in worker_extras["push"])
    assert "zpe-core[redis,gcs,metrics]" in worker_extras["push"]
    api, _ = _dependencies("services/api/pyproject.toml")
    assert "zpe-core[redis,gcs,cloud-tasks,metrics]" in api
