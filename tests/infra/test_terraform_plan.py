"""Assertions on what ``terraform plan`` would deploy, per execution mode and provider version.

On ``terraform show -json`` of the plans scripts/terraform-check.sh makes from
infra/terraform/examples/*.tfvars (not on the HCL text): IAM grants, ingress, each container's
environment, secrets, and every variable ``validation`` and deployment precondition evaluated
by terraform on bad values.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import CheckRun, terraform_binary
from tests.infra.hcl import Config
from tests.infra.offline_provider import mirror
from tests.infra.plan import Plan
from tests.infra.terraform_check import EXAMPLES, terraform_env

VERSIONS = [g.version for g in mirror.GOOGLE_VERSIONS]
PROJECT = "zpe-example"
API_SA = f"serviceAccount:zpe-api@{PROJECT}.iam.gserviceaccount.com"
WORKER_SA = f"serviceAccount:zpe-worker@{PROJECT}.iam.gserviceaccount.com"
INVOKER_SA = f"serviceAccount:zpe-invoker@{PROJECT}.iam.gserviceaccount.com"
API = "module.api.google_cloud_run_v2_service.this"
WORKER = "module.worker[0].google_cloud_run_v2_service.this"
PUBLIC = "module.api.google_cloud_run_v2_service_iam_member.public[0]"

GetPlan = Callable[[str, str], Plan]


@pytest.fixture(params=VERSIONS, ids=[f"google-{v}" for v in VERSIONS])
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_worker_is_invokable_only_by_the_tasks_invoker(plans: GetPlan, version: str) -> None:
    for example in ("cloud-tasks", "cloud-tasks-redis"):
        plan = plans(version, example)
        on_worker = [(role, member) for _a, role, member, on in plan.grants() if on == "zpe-worker"]
        assert on_worker == [("roles/run.invoker", INVOKER_SA)], example
        # ... and only the API may put the invoker's identity on a task.
        acts_as = [
            (role, member, on)
            for _a, role, member, on in plan.grants()
            if "serviceAccounts/" in on or role == "roles/iam.serviceAccountUser"
        ]
        assert acts_as == [
            (
                "roles/iam.serviceAccountUser",
                API_SA,
                f"projects/{PROJECT}/serviceAccounts/zpe-invoker@{PROJECT}.iam.gserviceaccount.com",
            )
        ]
        # The invoker runs nothing.
        run_as = {plan.get(s).values["template"][0]["service_account"] for s in (API, WORKER)}
        assert INVOKER_SA.split(":", 1)[1] not in run_as


@pytest.mark.parametrize(
    ("example", "holders"),
    [
        ("cloud-tasks", {API_SA, WORKER_SA}),
        ("http-pull", {API_SA}),
        ("inprocess", {API_SA}),
    ],
)
def test_the_bucket_is_reachable_only_by_the_api_and_worker(
    plans: GetPlan, version: str, example: str, holders: set[str]
) -> None:
    plan = plans(version, example)
    (bucket,) = plan.of_type("google_storage_bucket")
    assert bucket.values["public_access_prevention"] == "enforced"
    assert bucket.values["uniform_bucket_level_access"] is True
    on_bucket = [(r, m) for _a, r, m, on in plan.grants() if on == bucket.values["name"]]
    assert sorted(on_bucket) == sorted(("roles/storage.objectAdmin", h) for h in holders)
    assert not plan.of_type("google_redis_instance")


def test_redis_is_reachable_only_by_the_api_and_worker(plans: GetPlan, version: str) -> None:
    plan = plans(version, "cloud-tasks-redis")
    assert not plan.of_type("google_storage_bucket")
    (redis,) = plan.of_type("google_redis_instance")
    assert redis.values["auth_enabled"] is True
    assert redis.values["transit_encryption_mode"] == "SERVER_AUTHENTICATION"
    (firewall,) = plan.of_type("google_compute_firewall")
    assert firewall.values["direction"] == "INGRESS" and firewall.values["deny"] == [
        {"ports": None, "protocol": "all"}
    ]
    # Its URL (AUTH string inside) and CA: readable by the two service accounts only.
    for secret in ("zpe-store-url", "zpe-redis-ca"):
        holders = sorted((r, m) for _a, r, m, on in plan.grants() if on == secret)
        assert holders == [
            ("roles/secretmanager.secretAccessor", API_SA),
            ("roles/secretmanager.secretAccessor", WORKER_SA),
        ], secret
    for service in (API, WORKER):
        vpc = plan.get(service).values["template"][0]["vpc_access"]
        assert vpc and vpc[0]["egress"] == "PRIVATE_RANGES_ONLY", service


@pytest.mark.parametrize("example", ["inprocess", "cloud-tasks", "cloud-tasks-redis", "http-pull"])
def test_all_users_only_on_the_api_and_only_in_http_pull(
    plans: GetPlan, version: str, example: str
) -> None:
    plan = plans(version, example)
    public = [
        (address, member)
        for address, member in plan.members_anywhere()
        if member in ("allUsers", "allAuthenticatedUsers")
    ]
    expected = [(PUBLIC, "allUsers")] if example == "http-pull" else []
    assert public == expected
    if expected:
        assert plan.get(PUBLIC).values["role"] == "roles/run.invoker"
        assert plan.get(PUBLIC).values["name"] == "zpe-api"


@pytest.mark.parametrize(
    ("example", "api_ingress", "worker_ingress"),
    [
        ("inprocess", "INGRESS_TRAFFIC_ALL", None),
        ("cloud-tasks", "INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_ONLY"),
        ("cloud-tasks-redis", "INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_ONLY"),
        ("http-pull", "INGRESS_TRAFFIC_ALL", None),
    ],
)
def test_ingress_per_service(
    plans: GetPlan, version: str, example: str, api_ingress: str, worker_ingress: str | None
) -> None:
    plan = plans(version, example)
    services = {r.address: r.values["ingress"] for r in plan.of_type("google_cloud_run_v2_service")}
    expected = {API: api_ingress, **({WORKER: worker_ingress} if worker_ingress else {})}
    assert services == expected


COMMON_API = {
    "ZPE_ALLOWED_ENGINES": "qe,mock",
    "ZPE_AUTH_MODE": "api-keys",
    "ZPE_DEFAULT_ENGINE": "qe",
    "ZPE_LEASE_SECONDS": "120",
    "ZPE_QE_VERSION": "qe-6.7MaX",
    "ZPE_REDISPATCH_AFTER_SECONDS": "900",
    "ZPE_TRUSTED_PROXIES": "*",
}
GCS_URL = f"gs://{PROJECT}-zpe-jobs/zpe"
TASKS = {
    "ZPE_TASKS_INVOKER_EMAIL": f"zpe-invoker@{PROJECT}.iam.gserviceaccount.com",
    "ZPE_TASKS_MAX_ATTEMPTS": "5",
    "ZPE_WORKER_AUDIENCE": f"https://zpe-worker.{PROJECT}.zpe.internal",
}
WORKER_ENV = {  # cloud-tasks.tfvars; cloud-tasks-redis.tfvars keeps worker_cpu = "2"
    "ZPE_ALLOWED_ENGINES": "qe,mock",
    "ZPE_DEFAULT_ENGINE": "qe",
    "ZPE_EXECUTION_MODE": "cloud-tasks",
    "ZPE_LEASE_SECONDS": "120",
    "ZPE_PSEUDO_DIR": "/usr/share/espresso/pseudo",
    "ZPE_PW_COMMAND": "mpirun --bind-to none -np 2 pw.x",
    "ZPE_QE_VERSION": "qe-6.7MaX",
    **TASKS,
}
UNKNOWN = "(known after apply)"
SECRET = "secret:"
# service -> env name -> plain value, UNKNOWN, or "secret:<secret id>".
EXPECTED_ENV: dict[str, dict[str, dict[str, str]]] = {
    "inprocess": {
        API: {
            **{k: v for k, v in COMMON_API.items() if k != "ZPE_QE_VERSION"},  # mock only
            "ZPE_ALLOWED_ENGINES": "mock",
            "ZPE_DEFAULT_ENGINE": "mock",
            "ZPE_EXECUTION_MODE": "inprocess",
            "ZPE_INGRESS": "all",
            "ZPE_STORE_URL": GCS_URL,
            "ZPE_ADMIN_TOKEN": "secret:zpe-admin-token",
        }
    },
    "http-pull": {
        API: {
            **COMMON_API,
            "ZPE_EXECUTION_MODE": "http-pull",
            "ZPE_INGRESS": "all",
            "ZPE_STORE_URL": GCS_URL,
            "ZPE_ADMIN_TOKEN": "secret:zpe-admin-token",
        }
    },
    "cloud-tasks": {
        API: {
            **COMMON_API,
            **TASKS,
            "ZPE_EXECUTION_MODE": "cloud-tasks",
            "ZPE_INGRESS": "all",
            "ZPE_STORE_URL": GCS_URL,
            "ZPE_TASKS_QUEUE": f"projects/{PROJECT}/locations/europe-west1/queues/zpe-tasks",
            "ZPE_WORKER_URL": UNKNOWN,
            "ZPE_ADMIN_TOKEN": "secret:zpe-admin-token",
        },
        WORKER: {
            **WORKER_ENV,
            "ZPE_PW_COMMAND": "mpirun --bind-to none -np 1 pw.x",
            "ZPE_STORE_URL": GCS_URL,
        },
    },
    "cloud-tasks-redis": {
        API: {
            **COMMON_API,
            **TASKS,
            "ZPE_EXECUTION_MODE": "cloud-tasks",
            "ZPE_INGRESS": "all",
            "ZPE_TASKS_QUEUE": f"projects/{PROJECT}/locations/europe-west1/queues/zpe-tasks",
            "ZPE_WORKER_URL": UNKNOWN,
            "ZPE_ADMIN_TOKEN": "secret:zpe-admin-token",
            "ZPE_STORE_URL": "secret:zpe-store-url",
        },
        WORKER: {**WORKER_ENV, "ZPE_STORE_URL": "secret:zpe-store-url"},
    },
}


def _env_view(plan: Plan, service: str) -> dict[str, str]:
    out = {}
    for name, var in plan.env(service).items():
        if var.secret is not None:
            assert var.value is None, f"{name} has both a value and a secret"
            out[name] = SECRET + var.secret
        elif var.unknown:
            out[name] = UNKNOWN
        else:
            assert var.value is not None, f"{service}: {name} is set to null"
            out[name] = var.value
    return out


@pytest.mark.parametrize("example", sorted(EXPECTED_ENV))
def test_every_container_environment(plans: GetPlan, version: str, example: str) -> None:
    plan = plans(version, example)
    services = {r.address for r in plan.of_type("google_cloud_run_v2_service")}
    assert services == set(EXPECTED_ENV[example])
    for service, expected in EXPECTED_ENV[example].items():
        assert _env_view(plan, service) == expected, service
        container = plan.container(service)
        # The image's own command runs (services/*/Dockerfile CMD): Terraform overrides none.
        assert container.get("command") in (None, []) and container.get("args") in (None, [])


@pytest.mark.parametrize("example", ["cloud-tasks", "cloud-tasks-redis"])
def test_api_and_worker_agree_on_the_engine_version(
    plans: GetPlan, version: str, example: str
) -> None:
    plan = plans(version, example)
    api, worker = plan.env(API)["ZPE_QE_VERSION"], plan.env(WORKER)["ZPE_QE_VERSION"]
    assert api.value == worker.value == plan.variables["qe_version"] == "qe-6.7MaX"


SECRETISH = re.compile(r"token|secret|password|passwd|auth_string|private", re.I)
CREDENTIAL_URL = re.compile(r"^[a-z]+://[^/@\s]*:[^/@\s]*@")


@pytest.mark.parametrize("example", sorted(EXPECTED_ENV))
def test_secrets_reach_containers_only_through_secret_manager(
    plans: GetPlan, version: str, example: str
) -> None:
    plan = plans(version, example)
    for service in EXPECTED_ENV[example]:
        for name, var in plan.env(service).items():
            if var.value is not None:
                assert not SECRETISH.search(name), f"{service}: {name} is a plain env value"
                assert not CREDENTIAL_URL.match(var.value), f"{service}: {name} has credentials"
        secrets = {s.values["secret_id"] for s in plan.of_type("google_secret_manager_secret")}
        referenced = {v.secret for v in plan.env(service).values() if v.secret}
        assert referenced <= secrets, f"{service} reads secrets that are not created here"
    # Secret values are sensitive in the plan, and no output carries one.
    for change in plan.document["resource_changes"]:
        if change["type"] == "google_secret_manager_secret_version":
            assert change["change"]["after_sensitive"].get("secret_data") is True
    outputs = json.dumps(plan.document.get("output_changes", {}))
    assert "secret_data" not in outputs and "rediss://" not in outputs


# --- variable validation and deployment rules, evaluated by terraform ----------------------

BAD_VALUES: dict[str, Any] = {
    "project": "Bad_Project",
    "region": "europe",
    "name_prefix": "x",
    "execution_mode": "push",
    "store": "s3",
    "auth_mode": "anonymous",
    "qe_version": "latest",
    "api_image": "zpe-api",
    "worker_image": "zpe-worker:latest",
    "image_keep_count": 0,
    "image_retention_days": 0,
    "api_cpu": "3",
    "api_memory": "512MB",
    "api_concurrency": 0,
    "api_timeout_seconds": 5,
    "api_min_instances": -1,
    "api_max_instances": 0,
    "api_ingress": "public",
    "api_invoker_members": ["allUsers"],
    "worker_cpu": "3",
    "worker_memory": "4GB",
    "worker_concurrency": 9,
    "worker_timeout_seconds": 30,
    "worker_min_instances": -1,
    "worker_max_instances": 0,
    "default_engine": "vasp",
    "allowed_engines": "qe,vasp",
    "lease_seconds": 10,
    "redispatch_after_seconds": 10,
    "queue_max_attempts": 0,
    "queue_min_backoff_seconds": 0,
    "queue_max_backoff_seconds": 0,
    "queue_max_doublings": 17,
    "queue_max_retry_duration_seconds": -1,
    "queue_max_dispatches_per_second": 0,
    "queue_max_concurrent_dispatches": 0,
    "queue_log_sampling_ratio": 2,
    "store_prefix": "a/b",
    "artifact_retention_days": 0,
    "noncurrent_retention_days": 0,
    "redis_tier": "PREMIUM",
    "redis_memory_size_gb": 0,
    "redis_version": "7.2",
    "subnet_cidr": "10.8.0.0/28",
}


def _plan_json(terraform_check: CheckRun, tmp_path: Path, values: dict[str, Any]) -> list[str]:
    """``terraform plan -json`` of the checked configuration with the cloud-tasks example
    overridden by ``values``; the detail text of every error diagnostic."""
    google = mirror.GOOGLE_VERSIONS[0]
    work = terraform_check.out / "work" / f"google-{google.version}"
    bad = tmp_path / "bad.tfvars.json"
    bad.write_text(json.dumps(values))
    proc = subprocess.run(
        [terraform_binary(), "plan", "-json", "-input=false", "-lock=false", "-refresh=false",
         f"-var-file={EXAMPLES / 'cloud-tasks.tfvars'}", f"-var-file={bad}"],
        cwd=work, env=terraform_env(mirror.cli_config(google)),
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    errors = []
    for line in proc.stdout.splitlines():
        message = json.loads(line)
        diagnostic = message.get("diagnostic") or {}
        if diagnostic.get("severity") == "error":
            errors.append(diagnostic.get("summary", "") + ": " + diagnostic.get("detail", ""))
    assert errors or proc.returncode == 0, proc.stderr[-2000:]
    return errors


@pytest.fixture(scope="module")
def bad_value_errors(
    terraform_check: CheckRun, plans: GetPlan, tmp_path_factory: pytest.TempPathFactory
) -> list[str]:
    """One plan with every variable set to a bad value: terraform reports every rule."""
    return _plan_json(terraform_check, tmp_path_factory.mktemp("bad"), BAD_VALUES)


def _validation_message(tf: Config, name: str) -> str:
    (variable,) = [v for v in tf.variables("") if v.name == name]
    message: str = variable.body["validation"][0]["error_message"]
    return message


def test_every_validation_rule_has_a_bad_value(tf: Config) -> None:
    with_rules = {v.name for v in tf.variables("") if v.body.get("validation")}
    assert with_rules == set(BAD_VALUES)


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_variable_validation_rejects_a_bad_value(
    name: str, tf: Config, bad_value_errors: list[str]
) -> None:
    message = _validation_message(tf, name)
    hits = [e for e in bad_value_errors if message in e]
    assert hits, f"{name}={BAD_VALUES[name]!r} was not refused with {message!r}: {bad_value_errors}"
    assert all(e.startswith("Invalid value for variable") for e in hits)


RULES: dict[str, tuple[dict[str, Any], str]] = {
    "anonymous-public-api": (
        {"execution_mode": "http-pull", "auth_mode": "none"},
        "auth_mode = \"none\" makes every caller the same user 'anonymous', but this API is public",
    ),
    "anonymous-opt-in-public-api": (
        {"api_allow_unauthenticated": True, "auth_mode": "none"},
        "but this API is public",
    ),
    "no-engine-version": (
        {"qe_version": None},
        'qe_version is required with execution_mode = "cloud-tasks"',
    ),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_deployment_rule_refuses_the_plan(
    rule: str, terraform_check: CheckRun, plans: GetPlan, tmp_path: Path
) -> None:
    values, message = RULES[rule]
    errors = _plan_json(terraform_check, tmp_path, values)
    assert any(message in " ".join(e.split()) for e in errors), errors


def test_anonymous_private_api_is_allowed_and_says_so(
    terraform_check: CheckRun, plans: GetPlan, tmp_path: Path
) -> None:
    """auth_mode = none behind Cloud Run IAM plans, with the app's override set explicitly."""
    assert _plan_json(terraform_check, tmp_path, {"auth_mode": "none"}) == []
