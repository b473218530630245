# ZPE compute service on Cloud Run: the control plane (API), the compute plane (worker),
# the Cloud Tasks queue between them, the job store, identities and secrets.
#
# What exists depends on var.execution_mode (see docs/deploy.md, "What each mode creates"):
#   inprocess   - API only (it runs its own worker processes); no queue, no worker, no invoker.
#   http-pull   - API only, reachable from the internet so external pull workers can lease tasks.
#   cloud-tasks - API + Cloud Tasks queue + private worker service + tasks-invoker identity.

provider "google" {
  project        = var.project
  region         = var.region
  default_labels = var.labels
}

locals {
  inprocess   = var.execution_mode == "inprocess"
  http_pull   = var.execution_mode == "http-pull"
  cloud_tasks = var.execution_mode == "cloud-tasks"

  use_gcs   = var.store == "gcs"
  use_redis = var.store == "redis"

  # External pull workers authenticate with worker tokens at the application level, not with
  # Google identities, so http-pull needs an API that anyone may call (the app checks tokens).
  api_public = local.http_pull || var.api_allow_unauthenticated

  api_ingress = local.http_pull ? "INGRESS_TRAFFIC_ALL" : lookup({
    "all"                               = "INGRESS_TRAFFIC_ALL"
    "internal"                          = "INGRESS_TRAFFIC_INTERNAL_ONLY"
    "internal-and-cloud-load-balancing" = "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"
  }, var.api_ingress)

  # The API image carries no pw.x: in inprocess mode on Cloud Run only the mock engine can run.
  allowed_engines = local.inprocess ? "mock" : var.allowed_engines
  default_engine  = local.inprocess ? "mock" : var.default_engine

  # The pw.x version of the worker image enters every task key: the API (which plans tasks)
  # and the worker (which runs them) must agree on it, so both get the same value.
  qe_version_env   = var.qe_version == null ? {} : { ZPE_QE_VERSION = var.qe_version }
  needs_qe_version = !local.inprocess && contains([for e in split(",", local.allowed_engines) : trimspace(e)], "qe")

  worker_pw_command = coalesce(var.worker_pw_command, "mpirun --bind-to none -np ${var.worker_cpu} pw.x")

  redis_ca_dir = "/etc/zpe/redis-ca"

  # OIDC audience of Cloud Tasks pushes: the API mints tokens for it, the worker verifies it.
  worker_audience = "https://${var.name_prefix}-worker.${var.project}.zpe.internal"

  # gs://bucket/prefix is no secret: plain env. A redis:// URL carries the AUTH string, so with
  # store = "redis" ZPE_STORE_URL comes from Secret Manager instead (secret_env below).
  store_env = local.use_gcs ? { ZPE_STORE_URL = module.job_store.store_url } : {}

  base_apis = [
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "iam.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ]
  apis = toset(concat(
    local.base_apis,
    local.cloud_tasks ? ["cloudtasks.googleapis.com"] : [],
    local.use_redis ? ["compute.googleapis.com", "redis.googleapis.com"] : [],
  ))
}

resource "google_project_service" "apis" {
  for_each = local.apis

  project            = var.project
  service            = each.value
  disable_on_destroy = false
}

# Images are pushed here by cloudbuild.yaml; Cloud Run pulls them with its own service agent.
resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption is sufficient for public-source container images; set up CMEK at the organisation level if policy requires it.
  project       = var.project
  location      = var.region
  repository_id = "${var.name_prefix}-images"
  format        = "DOCKER"
  description   = "ZPE API and worker images (built by cloudbuild.yaml)"

  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.image_keep_count
    }
  }
  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "${var.image_retention_days * 86400}s"
    }
  }

  depends_on = [google_project_service.apis]
}

module "job_store" {
  source = "./modules/job_store"

  project                   = var.project
  region                    = var.region
  name_prefix               = var.name_prefix
  store                     = var.store
  bucket_location           = coalesce(var.bucket_location, var.region)
  store_prefix              = var.store_prefix
  artifact_retention_days   = var.artifact_retention_days
  noncurrent_retention_days = var.noncurrent_retention_days
  force_destroy             = var.bucket_force_destroy

  # objectAdmin on this bucket only, for the identities that open the store.
  object_admin_emails = merge(
    { api = google_service_account.api.email },
    local.cloud_tasks ? { worker = google_service_account.worker[0].email } : {},
  )

  redis_tier           = var.redis_tier
  redis_memory_size_gb = var.redis_memory_size_gb
  redis_version        = var.redis_version
  subnet_cidr          = var.subnet_cidr
  redis_ca_path        = "${local.redis_ca_dir}/ca.pem"

  depends_on = [google_project_service.apis]
}

module "task_queue" {
  source = "./modules/task_queue"
  count  = local.cloud_tasks ? 1 : 0

  project = var.project
  region  = var.region
  name    = "${var.name_prefix}-tasks"

  max_attempts               = var.queue_max_attempts
  min_backoff_seconds        = var.queue_min_backoff_seconds
  max_backoff_seconds        = var.queue_max_backoff_seconds
  max_doublings              = var.queue_max_doublings
  max_retry_duration_seconds = var.queue_max_retry_duration_seconds
  max_dispatches_per_second  = var.queue_max_dispatches_per_second
  # One dispatch per worker slot by default: more would only queue inside Cloud Run.
  max_concurrent_dispatches = coalesce(var.queue_max_concurrent_dispatches, var.worker_max_instances * var.worker_concurrency)
  log_sampling_ratio        = var.queue_log_sampling_ratio

  # roles/cloudtasks.enqueuer on this queue only.
  enqueuer_email = google_service_account.api.email

  depends_on = [google_project_service.apis]
}

module "worker" {
  source = "./modules/worker_service"
  count  = local.cloud_tasks ? 1 : 0

  project               = var.project
  region                = var.region
  name                  = "${var.name_prefix}-worker"
  image                 = var.worker_image
  service_account_email = google_service_account.worker[0].email
  # roles/run.invoker on this service: the tasks-invoker identity and nobody else.
  invoker_email = google_service_account.invoker[0].email
  audience      = local.worker_audience

  cpu             = var.worker_cpu
  memory          = var.worker_memory
  concurrency     = var.worker_concurrency
  timeout_seconds = var.worker_timeout_seconds
  min_instances   = var.worker_min_instances
  max_instances   = var.worker_max_instances

  env = merge(local.store_env, local.qe_version_env, {
    ZPE_EXECUTION_MODE     = var.execution_mode
    ZPE_PW_COMMAND         = local.worker_pw_command
    ZPE_PSEUDO_DIR         = "/usr/share/espresso/pseudo"
    ZPE_DEFAULT_ENGINE     = local.default_engine
    ZPE_ALLOWED_ENGINES    = local.allowed_engines
    ZPE_LEASE_SECONDS      = tostring(var.lease_seconds)
    ZPE_TASKS_MAX_ATTEMPTS = tostring(var.queue_max_attempts)
    # What the worker app checks in each push's OIDC token (audience, invoker's email).
    ZPE_WORKER_AUDIENCE     = local.worker_audience
    ZPE_TASKS_INVOKER_EMAIL = google_service_account.invoker[0].email
  })
  secret_env = local.use_redis ? {
    ZPE_STORE_URL = google_secret_manager_secret.store_url[0].secret_id
  } : {}
  secret_files = local.use_redis ? {
    redis-ca = { secret = google_secret_manager_secret.redis_ca[0].secret_id, mount_path = local.redis_ca_dir, file_name = "ca.pem" }
  } : {}
  vpc = module.job_store.vpc

  depends_on = [
    google_project_service.apis,
    google_secret_manager_secret_iam_member.worker_store_url,
    google_secret_manager_secret_iam_member.worker_redis_ca,
    google_secret_manager_secret_version.store_url,
    google_secret_manager_secret_version.redis_ca,
  ]
}

module "api" {
  source = "./modules/api_service"

  project               = var.project
  region                = var.region
  name                  = "${var.name_prefix}-api"
  image                 = var.api_image
  service_account_email = google_service_account.api.email
  ingress               = local.api_ingress
  allow_unauthenticated = local.api_public
  invoker_members       = var.api_invoker_members

  cpu                  = var.api_cpu
  memory               = var.api_memory
  concurrency          = var.api_concurrency
  timeout_seconds      = var.api_timeout_seconds
  min_instances        = var.api_min_instances
  max_instances        = var.api_max_instances
  cpu_always_allocated = local.inprocess || var.api_cpu_always_allocated
  deletion_protection  = var.api_deletion_protection

  env = merge(
    local.store_env,
    local.qe_version_env,
    {
      ZPE_EXECUTION_MODE           = var.execution_mode
      ZPE_AUTH_MODE                = var.auth_mode
      ZPE_DEFAULT_ENGINE           = local.default_engine
      ZPE_ALLOWED_ENGINES          = local.allowed_engines
      ZPE_LEASE_SECONDS            = tostring(var.lease_seconds)
      ZPE_REDISPATCH_AFTER_SECONDS = tostring(var.redispatch_after_seconds)
      # Cloud Run's front end is the direct caller of every request: the poll limit keys
      # anonymous callers by the X-Forwarded-For entry it appended, not by its address.
      ZPE_TRUSTED_PROXIES = "*"
      # The ingress as deployed: the app refuses the IAP identity mode on a public API.
      ZPE_INGRESS = local.http_pull ? "all" : var.api_ingress
    },
    # auth_mode = "none" only on a private API (deployment_rules): every caller has passed
    # Cloud Run IAM, so the app may serve 'anonymous' on Cloud Run's non-loopback address.
    var.auth_mode == "none" ? { ZPE_ALLOW_ANONYMOUS_NETWORK = "true" } : {},
    local.cloud_tasks ? {
      ZPE_TASKS_QUEUE         = module.task_queue[0].id
      ZPE_WORKER_URL          = module.worker[0].uri
      ZPE_WORKER_AUDIENCE     = local.worker_audience
      ZPE_TASKS_INVOKER_EMAIL = google_service_account.invoker[0].email
      ZPE_TASKS_MAX_ATTEMPTS  = tostring(var.queue_max_attempts)
    } : {},
  )
  secret_env = merge(
    { ZPE_ADMIN_TOKEN = google_secret_manager_secret.admin_token.secret_id },
    local.use_redis ? { ZPE_STORE_URL = google_secret_manager_secret.store_url[0].secret_id } : {},
  )
  secret_files = local.use_redis ? {
    redis-ca = { secret = google_secret_manager_secret.redis_ca[0].secret_id, mount_path = local.redis_ca_dir, file_name = "ca.pem" }
  } : {}
  vpc = module.job_store.vpc

  depends_on = [
    terraform_data.deployment_rules,
    google_project_service.apis,
    google_secret_manager_secret_iam_member.api_admin_token,
    google_secret_manager_secret_iam_member.api_store_url,
    google_secret_manager_secret_iam_member.api_redis_ca,
    google_secret_manager_secret_version.admin_token,
    google_secret_manager_secret_version.store_url,
    google_secret_manager_secret_version.redis_ca,
    google_service_account_iam_member.api_acts_as_invoker,
    module.task_queue,
  ]
}

# Rules across variables, checked at plan time before anything is created (terraform_data is
# Terraform's built-in provider: nothing to download, nothing created in the project).
resource "terraform_data" "deployment_rules" {
  lifecycle {
    precondition {
      condition     = !(local.api_public && var.auth_mode == "none")
      error_message = "auth_mode = \"none\" makes every caller the same user 'anonymous', but this API is public (http-pull mode, or api_allow_unauthenticated = true). Use auth_mode = \"api-keys\"."
    }
    precondition {
      condition     = !local.needs_qe_version || var.qe_version != null
      error_message = "qe_version is required with execution_mode = \"${var.execution_mode}\" and the qe engine allowed: without ZPE_QE_VERSION the API refuses every qe job (engine_version_unset). cloudbuild.yaml passes it from the worker image (zpe-worker qe-version)."
    }
  }
}
