"""The Terraform under infra/terraform, parsed with python-hcl2 (in its own venv): wiring,
least privilege, secrets, and what each execution mode creates.

``terraform validate`` needs the google provider, which these machines cannot download; these
tests read the configuration itself instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.infra import rules
from tests.infra.conftest import TERRAFORM_DIR
from tests.infra.hcl import Block, Config, count_of, expr

WORKER = "modules/worker_service"
API = "modules/api_service"
QUEUE = "modules/task_queue"
STORE = "modules/job_store"

MODES = ("inprocess", "http-pull", "cloud-tasks")
DEFAULTS: dict[str, Any] = {
    "store": "gcs",
    "api_allow_unauthenticated": False,
    "generate_admin_token": True,
}


def env_for(mode: str, **overrides: Any) -> dict[str, Any]:
    return {**DEFAULTS, "execution_mode": mode, **overrides}


def created(cfg: Config, mode: str, **overrides: Any) -> set[str]:
    """Root-level resources and module calls that exist in a mode."""
    env = env_for(mode, **overrides)
    local_defs = cfg.locals("")
    blocks: list[Block] = cfg.resources(module_dir="") + list(cfg.modules("").values())
    return {
        f"{b.kind}.{b.name}" if b.kind != "module" else f"module.{b.name}"
        for b in blocks
        if count_of(b, env, local_defs)
    }


def module_arg(cfg: Config, module: str, arg: str) -> str:
    return expr(cfg.modules()[module].body[arg])


def compact(text: str) -> str:
    return re.sub(r"\s+", "", text)


# --- variables and versions ----------------------------------------------------------------


def test_every_variable_has_description_and_type(tf: Config) -> None:
    assert tf.variables(), "no variables parsed"
    assert rules.variables_documented(tf) == []


def test_secret_looking_variables_are_sensitive(tf: Config) -> None:
    assert rules.secret_variables_sensitive(tf) == []


def test_root_variables_validate_the_mode_and_store(tf: Config) -> None:
    variables = {v.name: v for v in tf.variables("")}
    for name, values in {
        "execution_mode": ("inprocess", "cloud-tasks", "http-pull"),
        "store": ("gcs", "redis"),
    }.items():
        validation = variables[name].body.get("validation")
        assert validation, f"variable {name} has no validation"
        condition = str(validation[0]["condition"])
        for value in values:
            assert value in condition, f"variable {name}: validation does not allow {value}"
    per_service = [
        f"{svc}_{knob}"
        for svc in ("api", "worker")
        for knob in (
            "cpu",
            "memory",
            "concurrency",
            "timeout_seconds",
            "min_instances",
            "max_instances",
        )
    ]
    queue = [
        "queue_max_attempts",
        "queue_min_backoff_seconds",
        "queue_max_backoff_seconds",
        "queue_max_doublings",
        "queue_max_dispatches_per_second",
        "queue_max_concurrent_dispatches",
    ]
    missing = [
        n
        for n in per_service + queue + ["artifact_retention_days", "region", "project"]
        if n not in variables
    ]
    assert missing == [], f"missing variables: {missing}"
    unvalidated = [n for n in per_service + queue if not variables[n].body.get("validation")]
    assert unvalidated == [], f"variables without validation: {unvalidated}"


def test_versions_pinned(tf: Config) -> None:
    blocks = tf.terraform_blocks()
    assert blocks, "no terraform {} block"
    block = blocks[0]
    assert compact(block["required_version"]) == ">=1.5"
    providers = block["required_providers"][0]
    version = providers["google"]["version"]
    assert re.fullmatch(r"~>\s*[56]\.\d+", version), f"google provider pinned as {version!r}"
    assert providers["google"]["source"] == "hashicorp/google"


# --- what each mode creates -----------------------------------------------------------------


def test_inprocess_creates_no_queue_worker_or_invoker(tf: Config) -> None:
    made = created(tf, "inprocess")
    for absent in (
        "module.task_queue",
        "module.worker",
        "google_service_account.worker",
        "google_service_account.invoker",
        "google_service_account_iam_member.api_acts_as_invoker",
    ):
        assert absent not in made, f"inprocess mode creates {absent}"
    assert {"module.api", "module.job_store", "google_service_account.api"} <= made


def test_http_pull_creates_a_public_api_and_no_worker(tf: Config) -> None:
    made = created(tf, "http-pull")
    for absent in ("module.task_queue", "module.worker", "google_service_account.invoker"):
        assert absent not in made, f"http-pull mode creates {absent}"
    local_defs = tf.locals("")
    assert module_arg(tf, "api", "allow_unauthenticated") == "local.api_public"
    assert module_arg(tf, "api", "ingress") == "local.api_ingress"
    from tests.infra.hcl import evaluate

    assert evaluate(expr(local_defs["api_public"]), env_for("http-pull"), local_defs)
    assert not evaluate(expr(local_defs["api_public"]), env_for("cloud-tasks"), local_defs)
    assert expr(local_defs["api_ingress"]).startswith('local.http_pull ? "INGRESS_TRAFFIC_ALL"')


def test_cloud_tasks_creates_everything(tf: Config) -> None:
    made = created(tf, "cloud-tasks")
    for present in (
        "module.api",
        "module.job_store",
        "module.task_queue",
        "module.worker",
        "google_service_account.api",
        "google_service_account.worker",
        "google_service_account.invoker",
        "google_service_account_iam_member.api_acts_as_invoker",
        "google_artifact_registry_repository.images",
        "google_secret_manager_secret.admin_token",
        "google_secret_manager_secret_iam_member.api_admin_token",
    ):
        assert present in made, f"cloud-tasks mode does not create {present}"


def test_redis_secrets_only_with_redis(tf: Config) -> None:
    redis_only = {
        "google_secret_manager_secret.store_url",
        "google_secret_manager_secret.redis_ca",
        "google_secret_manager_secret_iam_member.api_store_url",
    }
    for mode in MODES:
        assert not redis_only & created(tf, mode, store="gcs"), f"{mode}/gcs creates redis secrets"
        assert redis_only <= created(tf, mode, store="redis"), f"{mode}/redis lacks redis secrets"
    worker_access = "google_secret_manager_secret_iam_member.worker_store_url"
    assert worker_access in created(tf, "cloud-tasks", store="redis")
    assert worker_access not in created(tf, "http-pull", store="redis")


def test_job_store_resources_follow_the_store(tf: Config) -> None:
    local_defs = tf.locals(STORE)
    for store, present, absent in (
        ("gcs", {"google_storage_bucket"}, {"google_redis_instance", "google_compute_network"}),
        (
            "redis",
            {"google_redis_instance", "google_compute_network", "google_compute_subnetwork"},
            {"google_storage_bucket"},
        ),
    ):
        made = {
            b.kind
            for b in tf.resources(module_dir=STORE)
            if count_of(b, {"store": store}, local_defs)
        }
        assert present <= made, f"store={store}: missing {present - made}"
        assert not absent & made, f"store={store}: creates {absent & made}"


# --- identities and IAM ---------------------------------------------------------------------


def test_three_distinct_service_accounts(tf: Config) -> None:
    accounts = {
        b.name: expr(b.body["account_id"]) for b in tf.resources("google_service_account", "")
    }
    assert set(accounts) == {"api", "worker", "invoker"}, accounts
    assert len(set(accounts.values())) == 3, f"service accounts share an account_id: {accounts}"
    assert module_arg(tf, "api", "service_account_email") == "google_service_account.api.email"
    assert (
        module_arg(tf, "worker", "service_account_email")
        == "google_service_account.worker[0].email"
    )


def test_no_project_level_grants(tf: Config) -> None:
    assert rules.no_project_level_grants(tf) == []


def test_worker_is_not_public(tf: Config) -> None:
    assert rules.no_public_members(tf, WORKER) == []
    service = tf.resource("google_cloud_run_v2_service", "this", WORKER)
    assert service.body["ingress"] == "INGRESS_TRAFFIC_INTERNAL_ONLY", service.address


def test_the_only_public_grant_is_the_optional_api_invoker(tf: Config) -> None:
    assert rules.public_grants(tf) == [f"{API}:google_cloud_run_v2_service_iam_member.public"]
    public = tf.resource("google_cloud_run_v2_service_iam_member", "public", API)
    assert expr(public.body["count"]) == "var.allow_unauthenticated ? 1 : 0"


def test_invoker_is_the_only_run_invoker_on_the_worker(tf: Config) -> None:
    assert rules.run_invokers(tf, WORKER) == ["serviceAccount:${var.invoker_email}"]
    assert module_arg(tf, "worker", "invoker_email") == "google_service_account.invoker[0].email"


def test_api_may_enqueue_to_this_queue_only(tf: Config) -> None:
    grants = tf.resources("google_cloud_tasks_queue_iam_member", QUEUE)
    assert [g.body["role"] for g in grants] == ["roles/cloudtasks.enqueuer"]
    grant = grants[0].body
    assert expr(grant["name"]) == "google_cloud_tasks_queue.this.name"
    assert grant["member"] == "serviceAccount:${var.enqueuer_email}"
    assert module_arg(tf, "task_queue", "enqueuer_email") == "google_service_account.api.email"


def test_api_acts_as_the_invoker_only(tf: Config) -> None:
    grant = tf.resource("google_service_account_iam_member", "api_acts_as_invoker").body
    assert expr(grant["service_account_id"]) == "google_service_account.invoker[0].name"
    assert grant["role"] == "roles/iam.serviceAccountUser"
    assert grant["member"] == "serviceAccount:${google_service_account.api.email}"
    others = [
        b
        for b in tf.resources("google_service_account_iam_member")
        if b.name != "api_acts_as_invoker"
    ]
    assert others == [], f"other service-account grants: {[b.address for b in others]}"


def test_bucket_roles_are_per_bucket_and_per_identity(tf: Config) -> None:
    grants = tf.resources("google_storage_bucket_iam_member")
    assert [g.name for g in grants] == ["object_admin"]
    body = grants[0].body
    assert body["role"] == "roles/storage.objectAdmin"
    assert expr(body["bucket"]) == "google_storage_bucket.this[0].name"
    assert body["member"] == "serviceAccount:${each.value}"
    admins = compact(module_arg(tf, "job_store", "object_admin_emails"))
    assert "api=google_service_account.api.email" in admins
    assert "local.cloud_tasks?{worker=google_service_account.worker[0].email}:{}" in admins
    assert "invoker" not in admins, "the invoker identity must not get bucket access"


def test_admin_token_readable_by_the_api_only(tf: Config) -> None:
    accessors = [
        b
        for b in tf.resources("google_secret_manager_secret_iam_member", "")
        if "admin_token" in str(b.body["secret_id"])
    ]
    assert [b.name for b in accessors] == ["api_admin_token"]
    assert accessors[0].body["role"] == "roles/secretmanager.secretAccessor"
    assert accessors[0].body["member"] == "serviceAccount:${google_service_account.api.email}"


# --- secrets --------------------------------------------------------------------------------


def test_secrets_only_by_reference(tf: Config) -> None:
    assert rules.secrets_by_reference_only(tf) == []
    api_env = compact(module_arg(tf, "api", "env"))
    assert "ZPE_ADMIN_TOKEN" not in api_env, "the admin token is in plain env"
    assert "ZPE_PUSH_SHARED_SECRET" not in api_env + compact(module_arg(tf, "worker", "env"))
    secret_env = compact(module_arg(tf, "api", "secret_env"))
    assert "ZPE_ADMIN_TOKEN=google_secret_manager_secret.admin_token.secret_id" in secret_env
    for module_dir in (API, WORKER):
        service = tf.resource("google_cloud_run_v2_service", "this", module_dir)
        dynamics = service.body["template"][0]["containers"][0]["dynamic"]
        secret_blocks = [
            d["env"] for d in dynamics if "env" in d and "secret_env" in str(d["env"]["for_each"])
        ]
        assert len(secret_blocks) == 1, f"{service.address}: no dynamic env over var.secret_env"
        ref = secret_blocks[0]["content"][0]["value_source"][0]["secret_key_ref"][0]
        assert expr(ref["secret"]) == "env.value", service.address


def test_redis_url_goes_to_secret_manager_only(tf: Config) -> None:
    out = {o.name: o for o in tf.outputs(STORE)}["redis_url"]
    assert out.body.get("sensitive") is True
    version = tf.resource("google_secret_manager_secret_version", "store_url")
    assert expr(version.body["secret_data"]) == "module.job_store.redis_url"


# --- the services ---------------------------------------------------------------------------


def test_worker_keeps_cpu_and_has_a_long_timeout(tf: Config) -> None:
    service = tf.resource("google_cloud_run_v2_service", "this", WORKER)
    template = service.body["template"][0]
    resources = template["containers"][0]["resources"][0]
    assert resources["cpu_idle"] is False, f"{service.address}: cpu_idle must be false"
    assert template["timeout"] == "${var.timeout_seconds}s"
    root = {v.name: v.body for v in tf.variables("")}
    assert root["worker_timeout_seconds"]["default"] >= 3600
    assert root["worker_concurrency"]["default"] == 1
    assert module_arg(tf, "worker", "timeout_seconds") == "var.worker_timeout_seconds"
    assert module_arg(tf, "worker", "concurrency") == "var.worker_concurrency"


def test_each_service_has_its_own_sizing(tf: Config) -> None:
    for module, prefix in (("api", "api"), ("worker", "worker")):
        for arg, var in (
            ("cpu", "cpu"),
            ("memory", "memory"),
            ("concurrency", "concurrency"),
            ("timeout_seconds", "timeout_seconds"),
            ("min_instances", "min_instances"),
            ("max_instances", "max_instances"),
        ):
            assert module_arg(tf, module, arg) == f"var.{prefix}_{var}", f"module.{module}.{arg}"
    for module_dir in (API, WORKER):
        template = tf.resource("google_cloud_run_v2_service", "this", module_dir).body["template"][
            0
        ]
        assert expr(template["max_instance_request_concurrency"]) == "var.concurrency"
        scaling = template["scaling"][0]
        assert expr(scaling["min_instance_count"]) == "var.min_instances"
        assert expr(scaling["max_instance_count"]) == "var.max_instances"
        limits = template["containers"][0]["resources"][0]["limits"]
        assert expr(limits["cpu"]) == "var.cpu" and expr(limits["memory"]) == "var.memory"


def test_api_env_is_wired_from_resources(tf: Config) -> None:
    env = compact(module_arg(tf, "api", "env"))
    for wiring in (
        "ZPE_EXECUTION_MODE=var.execution_mode",
        "ZPE_TASKS_QUEUE=module.task_queue[0].id",
        "ZPE_WORKER_URL=module.worker[0].uri",
        "ZPE_WORKER_AUDIENCE=local.worker_audience",
        "ZPE_TASKS_INVOKER_EMAIL=google_service_account.invoker[0].email",
        "ZPE_TASKS_MAX_ATTEMPTS=tostring(var.queue_max_attempts)",
        "local.store_env",
    ):
        assert wiring in env, f"module.api env lacks {wiring}"
    assert "local.cloud_tasks?{" in env, "the Cloud Tasks env must only be set in cloud-tasks mode"
    store_env = compact(expr(tf.locals("")["store_env"]))
    assert store_env == "local.use_gcs?{ZPE_STORE_URL=module.job_store.store_url}:{}"


def test_worker_env_is_wired_from_resources(tf: Config) -> None:
    env = compact(module_arg(tf, "worker", "env"))
    for wiring in (
        "local.store_env",
        "ZPE_EXECUTION_MODE=var.execution_mode",
        'ZPE_PSEUDO_DIR="/usr/share/espresso/pseudo"',
        "ZPE_PW_COMMAND=local.worker_pw_command",
        # The worker checks each push's OIDC token against the audience the API mints it for.
        "ZPE_WORKER_AUDIENCE=local.worker_audience",
        "ZPE_TASKS_INVOKER_EMAIL=google_service_account.invoker[0].email",
    ):
        assert wiring in env, f"module.worker env lacks {wiring}"
    assert compact(module_arg(tf, "worker", "audience")) == "local.worker_audience"
    assert "ADMIN_TOKEN" not in env + compact(module_arg(tf, "worker", "secret_env"))


# --- queue and bucket ----------------------------------------------------------------------


def test_queue_has_explicit_retry_and_rate_limits(tf: Config) -> None:
    queue = tf.resource("google_cloud_tasks_queue", "this", QUEUE).body
    retry = queue["retry_config"][0]
    assert expr(retry["max_attempts"]) == "var.max_attempts"
    assert retry["min_backoff"] == "${var.min_backoff_seconds}s"
    assert retry["max_backoff"] == "${var.max_backoff_seconds}s"
    assert expr(retry["max_doublings"]) == "var.max_doublings"
    limits = queue["rate_limits"][0]
    assert expr(limits["max_dispatches_per_second"]) == "var.max_dispatches_per_second"
    assert expr(limits["max_concurrent_dispatches"]) == "var.max_concurrent_dispatches"
    for arg in (
        "max_attempts",
        "min_backoff_seconds",
        "max_backoff_seconds",
        "max_doublings",
        "max_dispatches_per_second",
    ):
        assert module_arg(tf, "task_queue", arg) == f"var.queue_{arg}"


def test_bucket_is_private_with_lifecycle(tf: Config) -> None:
    bucket = tf.resource("google_storage_bucket", "this", STORE)
    body = bucket.body
    assert body["public_access_prevention"] == "enforced", bucket.address
    assert body["uniform_bucket_level_access"] is True, bucket.address
    rules_ = body["lifecycle_rule"]
    artifact_rules = [
        r
        for r in rules_
        if r["action"][0]["type"] == "Delete"
        and "blobs/" in str(r["condition"][0].get("matches_prefix"))
    ]
    assert artifact_rules, f"{bucket.address}: no lifecycle rule deleting finished jobs' artifacts"
    assert expr(artifact_rules[0]["condition"][0]["age"]) == "var.artifact_retention_days"


def test_redis_is_private_authenticated_and_encrypted(tf: Config) -> None:
    redis = tf.resource("google_redis_instance", "this", STORE).body
    assert redis["auth_enabled"] is True
    assert redis["transit_encryption_mode"] == "SERVER_AUTHENTICATION"
    assert expr(redis["authorized_network"]) == "google_compute_network.this[0].id"
    for module_dir in (API, WORKER):
        template = tf.resource("google_cloud_run_v2_service", "this", module_dir).body["template"][
            0
        ]
        vpc = [d["vpc_access"] for d in template["dynamic"] if "vpc_access" in d]
        assert vpc and vpc[0]["content"][0]["egress"] == "PRIVATE_RANGES_ONLY", module_dir
    for module in ("api", "worker"):
        assert module_arg(tf, module, "vpc") == "module.job_store.vpc"


# --- the rules can fail ---------------------------------------------------------------------


def _mutated(tmp_path: Path, edits: dict[str, tuple[str, str]]) -> Path:
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM_DIR, copy, ignore=shutil.ignore_patterns(".terraform", "policies"))
    for rel, (old, new) in edits.items():
        path = copy / rel
        text = path.read_text()
        assert old in text, f"{rel}: {old!r} not found"
        path.write_text(text.replace(old, new, 1))
    return copy


def test_rules_catch_a_public_worker_and_an_undocumented_secret(
    tmp_path: Path, parse_dir: Callable[..., dict[str, Any]]
) -> None:
    bad = _mutated(
        tmp_path,
        {
            "modules/worker_service/main.tf": (
                'member   = "serviceAccount:${var.invoker_email}"',
                'member   = "allUsers"',
            ),
            "variables.tf": (
                'variable "labels" {',
                'variable "admin_token" {\n  type = string\n}\n\nvariable "labels" {',
            ),
        },
    )
    cfg = Config(parse_dir(bad)["tf"])
    invoker = f"{WORKER}:google_cloud_run_v2_service_iam_member.tasks_invoker"
    assert rules.no_public_members(cfg, WORKER) == [
        f"{invoker} ({WORKER}/main.tf): member = 'allUsers'"
    ]
    assert rules.run_invokers(cfg, WORKER) == ["allUsers"]
    assert "variable.admin_token (variables.tf): no description" in rules.variables_documented(cfg)
    assert rules.secret_variables_sensitive(cfg) == [
        "variable.admin_token (variables.tf): looks like a secret but is not sensitive = true"
    ]


# --- terraform fmt ---------------------------------------------------------------------------


def test_terraform_fmt() -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip(
            "no terraform binary on PATH (it is not installable from the package registries here)"
        )
    proc = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"terraform fmt would change:\n{proc.stdout}"


def test_readme_documents_every_root_variable(tf: Config) -> None:
    readme = (TERRAFORM_DIR / "README.md").read_text()
    missing = [v.name for v in tf.variables("") if f"| `{v.name}` |" not in readme]
    assert missing == [], f"infra/terraform/README.md does not document: {missing}"
