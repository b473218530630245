# Every input of the root module. Secrets are not inputs: the admin token is generated into
# Secret Manager (or added there out of band), see secrets.tf.

# --- where and what ------------------------------------------------------------------------

variable "project" {
  description = "GCP project id to deploy into."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project))
    error_message = "project must be a GCP project id (6-30 lowercase letters, digits, hyphens)."
  }
}

variable "region" {
  description = "Region of the Cloud Run services, the queue, the image repository and (by default) the bucket, e.g. europe-west1."
  type        = string
  default     = "europe-west1"
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must look like europe-west1 or us-central1."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name (services, service accounts, queue, secrets, bucket)."
  type        = string
  default     = "zpe"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,17}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-19 lowercase letters, digits or hyphens, starting with a letter (service account ids are limited to 30 characters)."
  }
}

variable "labels" {
  description = "Labels added to every resource that takes labels (provider default_labels)."
  type        = map(string)
  default     = { app = "zpe" }
}

variable "execution_mode" {
  description = "How the API dispatches tasks: inprocess (API only, runs its own worker processes, mock engine only on Cloud Run), http-pull (API only, public, external pull workers), cloud-tasks (API + Cloud Tasks queue + private worker service)."
  type        = string
  default     = "cloud-tasks"
  validation {
    condition     = contains(["inprocess", "cloud-tasks", "http-pull"], var.execution_mode)
    error_message = "execution_mode must be one of inprocess, cloud-tasks, http-pull."
  }
}

variable "store" {
  description = "Job store backend: gcs (a bucket, gs://bucket/prefix) or redis (Memorystore reached over direct VPC egress)."
  type        = string
  default     = "gcs"
  validation {
    condition     = contains(["gcs", "redis"], var.store)
    error_message = "store must be gcs or redis."
  }
}

# --- users and engine version --------------------------------------------------------------

variable "auth_mode" {
  description = "ZPE_AUTH_MODE of the API: api-keys (a bearer API key is required on the user API) or none (every caller is the one user 'anonymous'; refused whenever the API is public, i.e. in http-pull mode or with api_allow_unauthenticated)."
  type        = string
  default     = "api-keys"
  validation {
    condition     = contains(["api-keys", "none"], var.auth_mode)
    error_message = "auth_mode must be api-keys or none."
  }
}

variable "qe_version" {
  description = "ZPE_QE_VERSION of the API and the worker: the qe engine version of the worker image's pw.x (e.g. qe-6.7MaX), which enters every task key. cloudbuild.yaml reads it from the image it built (zpe-worker qe-version). Required when the qe engine is allowed in cloud-tasks or http-pull mode."
  type        = string
  default     = null
  nullable    = true
  validation {
    condition     = var.qe_version == null || can(regex("^qe-[0-9]+\\.[0-9]+[0-9A-Za-z.+-]*$", var.qe_version))
    error_message = "qe_version must be the qe engine version of a pw.x, such as qe-6.7MaX or qe-7.2 (zpe-worker qe-version prints it)."
  }
}

# --- images ----------------------------------------------------------------------------------

variable "api_image" {
  description = "API image reference, preferably by digest (REGION-docker.pkg.dev/PROJECT/REPO/zpe-api@sha256:...); cloudbuild.yaml passes the digest it pushed."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9.-]+(:[0-9]+)?/[^\\s@:]+(:[A-Za-z0-9_.-]+|@sha256:[0-9a-f]{64})$", var.api_image))
    error_message = "api_image must be a full image reference with a tag or an @sha256: digest."
  }
}

variable "worker_image" {
  description = "Worker image reference, preferably by digest; only used with execution_mode = cloud-tasks."
  type        = string
  default     = null
  nullable    = true
  validation {
    condition     = var.worker_image == null || can(regex("^[a-z0-9.-]+(:[0-9]+)?/[^\\s@:]+(:[A-Za-z0-9_.-]+|@sha256:[0-9a-f]{64})$", var.worker_image))
    error_message = "worker_image must be a full image reference with a tag or an @sha256: digest."
  }
}

variable "image_keep_count" {
  description = "Artifact Registry cleanup: always keep this many most recent versions of each image."
  type        = number
  default     = 20
  validation {
    condition     = var.image_keep_count >= 1
    error_message = "image_keep_count must be at least 1."
  }
}

variable "image_retention_days" {
  description = "Artifact Registry cleanup: delete image versions older than this (the most recent image_keep_count are always kept)."
  type        = number
  default     = 90
  validation {
    condition     = var.image_retention_days >= 1
    error_message = "image_retention_days must be at least 1."
  }
}

# --- API service -----------------------------------------------------------------------------

variable "api_cpu" {
  description = "vCPUs of one API instance (Cloud Run limit)."
  type        = string
  default     = "1"
  validation {
    condition     = contains(["1", "2", "4", "6", "8"], var.api_cpu)
    error_message = "api_cpu must be one of 1, 2, 4, 6, 8."
  }
}

variable "api_memory" {
  description = "Memory of one API instance (Cloud Run limit), e.g. 512Mi or 1Gi."
  type        = string
  default     = "512Mi"
  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.api_memory))
    error_message = "api_memory must look like 512Mi or 2Gi."
  }
}

variable "api_concurrency" {
  description = "Concurrent requests per API instance."
  type        = number
  default     = 40
  validation {
    condition     = var.api_concurrency >= 1 && var.api_concurrency <= 1000
    error_message = "api_concurrency must be between 1 and 1000."
  }
}

variable "api_timeout_seconds" {
  description = "Request timeout of the API (seconds). Long-polling lease requests of pull workers must fit in it."
  type        = number
  default     = 60
  validation {
    condition     = var.api_timeout_seconds >= 10 && var.api_timeout_seconds <= 3600
    error_message = "api_timeout_seconds must be between 10 and 3600."
  }
}

variable "api_min_instances" {
  description = "Minimum API instances. Keep 1 so the background reaper (expired leases, re-dispatch) always runs."
  type        = number
  default     = 1
  validation {
    condition     = var.api_min_instances >= 0 && var.api_min_instances <= 100
    error_message = "api_min_instances must be between 0 and 100."
  }
}

variable "api_max_instances" {
  description = "Maximum API instances."
  type        = number
  default     = 4
  validation {
    condition     = var.api_max_instances >= 1 && var.api_max_instances <= 1000
    error_message = "api_max_instances must be between 1 and 1000."
  }
}

variable "api_cpu_always_allocated" {
  description = "Keep CPU allocated outside requests (cpu_idle = false) so the reaper runs between requests. Forced on in inprocess mode, where the API runs the calculations."
  type        = bool
  default     = true
}

variable "api_ingress" {
  description = "API ingress when execution_mode is not http-pull (http-pull always uses all): all, internal, or internal-and-cloud-load-balancing."
  type        = string
  default     = "all"
  validation {
    condition     = contains(["all", "internal", "internal-and-cloud-load-balancing"], var.api_ingress)
    error_message = "api_ingress must be all, internal or internal-and-cloud-load-balancing."
  }
}

variable "api_allow_unauthenticated" {
  description = "Grant roles/run.invoker on the API to allUsers. Always on in http-pull mode (pull workers authenticate with worker tokens, not Google identities); otherwise callers need a Google identity token unless this is true."
  type        = bool
  default     = false
}

variable "api_invoker_members" {
  description = "Extra IAM members (user:, group:, serviceAccount:) allowed to invoke the API when it is not public."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for m in var.api_invoker_members : can(regex("^(user|group|serviceAccount|domain):", m))])
    error_message = "api_invoker_members entries must start with user:, group:, serviceAccount: or domain: (allUsers is controlled by api_allow_unauthenticated)."
  }
}

variable "api_deletion_protection" {
  description = "Cloud Run deletion protection on the API service (terraform destroy fails while true)."
  type        = bool
  default     = false
}

# --- worker service (cloud-tasks mode) -------------------------------------------------------

variable "worker_cpu" {
  description = "vCPUs of one worker instance; pw.x runs as mpirun -np <worker_cpu> unless worker_pw_command is set."
  type        = string
  default     = "2"
  validation {
    condition     = contains(["1", "2", "4", "6", "8"], var.worker_cpu)
    error_message = "worker_cpu must be one of 1, 2, 4, 6, 8."
  }
}

variable "worker_memory" {
  description = "Memory of one worker instance, e.g. 4Gi. pw.x of a slab needs several GiB."
  type        = string
  default     = "4Gi"
  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.worker_memory))
    error_message = "worker_memory must look like 2048Mi or 4Gi."
  }
}

variable "worker_concurrency" {
  description = "Concurrent tasks per worker instance. 1: each pw.x gets the whole instance."
  type        = number
  default     = 1
  validation {
    condition     = var.worker_concurrency >= 1 && var.worker_concurrency <= 8
    error_message = "worker_concurrency must be between 1 and 8."
  }
}

variable "worker_timeout_seconds" {
  description = "Request timeout of the worker (seconds): one task (one pw.x SCF) must finish in it. Cloud Tasks itself waits at most 1800 s per dispatch; longer tasks are kept alive by their lease heartbeats."
  type        = number
  default     = 3600
  validation {
    condition     = var.worker_timeout_seconds >= 60 && var.worker_timeout_seconds <= 3600
    error_message = "worker_timeout_seconds must be between 60 and 3600."
  }
}

variable "worker_min_instances" {
  description = "Minimum worker instances (0: scale to zero when idle)."
  type        = number
  default     = 0
  validation {
    condition     = var.worker_min_instances >= 0 && var.worker_min_instances <= 100
    error_message = "worker_min_instances must be between 0 and 100."
  }
}

variable "worker_max_instances" {
  description = "Maximum worker instances: the fan-out of a job (tasks running at once = worker_max_instances x worker_concurrency)."
  type        = number
  default     = 10
  validation {
    condition     = var.worker_max_instances >= 1 && var.worker_max_instances <= 1000
    error_message = "worker_max_instances must be between 1 and 1000."
  }
}

variable "worker_pw_command" {
  description = "ZPE_PW_COMMAND of the worker; null: mpirun --bind-to none -np <worker_cpu> pw.x."
  type        = string
  default     = null
  nullable    = true
}

# --- engines, leases -------------------------------------------------------------------------

variable "default_engine" {
  description = "ZPE_DEFAULT_ENGINE (inprocess mode on Cloud Run always uses mock: the API image has no pw.x)."
  type        = string
  default     = "qe"
  validation {
    condition     = contains(["qe", "mock"], var.default_engine)
    error_message = "default_engine must be qe or mock."
  }
}

variable "allowed_engines" {
  description = "ZPE_ALLOWED_ENGINES, comma-separated (inprocess mode on Cloud Run always uses mock)."
  type        = string
  default     = "qe,mock"
  validation {
    condition     = alltrue([for e in split(",", var.allowed_engines) : contains(["qe", "mock"], trimspace(e))])
    error_message = "allowed_engines must be a comma-separated subset of qe,mock."
  }
}

variable "lease_seconds" {
  description = "ZPE_LEASE_SECONDS: how long a task lease lasts between heartbeats."
  type        = number
  default     = 120
  validation {
    condition     = var.lease_seconds >= 30 && var.lease_seconds <= 3600
    error_message = "lease_seconds must be between 30 and 3600."
  }
}

variable "redispatch_after_seconds" {
  description = "ZPE_REDISPATCH_AFTER_SECONDS: a task still queued this long after its dispatch is dispatched again by the API's reaper."
  type        = number
  default     = 900
  validation {
    condition     = var.redispatch_after_seconds >= 60
    error_message = "redispatch_after_seconds must be at least 60."
  }
}

# --- Cloud Tasks queue (cloud-tasks mode) ----------------------------------------------------

variable "queue_max_attempts" {
  description = "Cloud Tasks retry_config.max_attempts: deliveries of one task before Cloud Tasks gives up (also ZPE_TASKS_MAX_ATTEMPTS)."
  type        = number
  default     = 5
  validation {
    condition     = var.queue_max_attempts >= 1 && var.queue_max_attempts <= 100
    error_message = "queue_max_attempts must be between 1 and 100."
  }
}

variable "queue_min_backoff_seconds" {
  description = "Cloud Tasks retry_config.min_backoff in seconds."
  type        = number
  default     = 10
  validation {
    condition     = var.queue_min_backoff_seconds >= 0.1
    error_message = "queue_min_backoff_seconds must be at least 0.1."
  }
}

variable "queue_max_backoff_seconds" {
  description = "Cloud Tasks retry_config.max_backoff in seconds."
  type        = number
  default     = 300
  validation {
    condition     = var.queue_max_backoff_seconds >= 1 && var.queue_max_backoff_seconds <= 3600
    error_message = "queue_max_backoff_seconds must be between 1 and 3600."
  }
}

variable "queue_max_doublings" {
  description = "Cloud Tasks retry_config.max_doublings: times the backoff doubles before growing linearly."
  type        = number
  default     = 4
  validation {
    condition     = var.queue_max_doublings >= 0 && var.queue_max_doublings <= 16
    error_message = "queue_max_doublings must be between 0 and 16."
  }
}

variable "queue_max_retry_duration_seconds" {
  description = "Cloud Tasks retry_config.max_retry_duration in seconds; 0: limited by max_attempts only."
  type        = number
  default     = 0
  validation {
    condition     = var.queue_max_retry_duration_seconds >= 0
    error_message = "queue_max_retry_duration_seconds must be 0 or more."
  }
}

variable "queue_max_dispatches_per_second" {
  description = "Cloud Tasks rate_limits.max_dispatches_per_second."
  type        = number
  default     = 5
  validation {
    condition     = var.queue_max_dispatches_per_second > 0 && var.queue_max_dispatches_per_second <= 500
    error_message = "queue_max_dispatches_per_second must be in (0, 500]."
  }
}

variable "queue_max_concurrent_dispatches" {
  description = "Cloud Tasks rate_limits.max_concurrent_dispatches; null: worker_max_instances x worker_concurrency."
  type        = number
  default     = null
  nullable    = true
  validation {
    condition     = var.queue_max_concurrent_dispatches == null || try(var.queue_max_concurrent_dispatches >= 1 && var.queue_max_concurrent_dispatches <= 5000, false)
    error_message = "queue_max_concurrent_dispatches must be null or between 1 and 5000."
  }
}

variable "queue_log_sampling_ratio" {
  description = "Fraction of task attempts Cloud Tasks logs (stackdriver_logging_config.sampling_ratio)."
  type        = number
  default     = 1
  validation {
    condition     = var.queue_log_sampling_ratio >= 0 && var.queue_log_sampling_ratio <= 1
    error_message = "queue_log_sampling_ratio must be between 0 and 1."
  }
}

# --- job store ------------------------------------------------------------------------------

variable "bucket_location" {
  description = "Location of the job-store bucket; null: the region."
  type        = string
  default     = null
  nullable    = true
}

variable "store_prefix" {
  description = "Object prefix of the store inside the bucket (ZPE_STORE_URL = gs://BUCKET/PREFIX)."
  type        = string
  default     = "zpe"
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]*$", var.store_prefix))
    error_message = "store_prefix must be lowercase letters, digits, _ or - (no slashes)."
  }
}

variable "artifact_retention_days" {
  description = "Days a finished job's artifacts (summary.txt, freqs.csv, result JSON blobs) are kept before the bucket lifecycle (or Redis expiry) deletes them; job records are kept."
  type        = number
  default     = 30
  validation {
    condition     = var.artifact_retention_days >= 1 && var.artifact_retention_days <= 3650
    error_message = "artifact_retention_days must be between 1 and 3650."
  }
}

variable "noncurrent_retention_days" {
  description = "Days superseded object versions (every compare-and-swap leaves one) are kept for recovery before the lifecycle deletes them."
  type        = number
  default     = 7
  validation {
    condition     = var.noncurrent_retention_days >= 1 && var.noncurrent_retention_days <= 365
    error_message = "noncurrent_retention_days must be between 1 and 365."
  }
}

variable "bucket_force_destroy" {
  description = "Let terraform destroy delete a non-empty job-store bucket (all jobs are lost). Keep false in production."
  type        = bool
  default     = false
}

variable "redis_tier" {
  description = "Memorystore tier when store = redis: BASIC (single node) or STANDARD_HA (replicated, failover)."
  type        = string
  default     = "STANDARD_HA"
  validation {
    condition     = contains(["BASIC", "STANDARD_HA"], var.redis_tier)
    error_message = "redis_tier must be BASIC or STANDARD_HA."
  }
}

variable "redis_memory_size_gb" {
  description = "Memorystore size in GiB when store = redis."
  type        = number
  default     = 1
  validation {
    condition     = var.redis_memory_size_gb >= 1 && var.redis_memory_size_gb <= 300
    error_message = "redis_memory_size_gb must be between 1 and 300."
  }
}

variable "redis_version" {
  description = "Memorystore Redis version when store = redis."
  type        = string
  default     = "REDIS_7_2"
  validation {
    condition     = can(regex("^REDIS_[0-9]+(_[0-9]+)?$", var.redis_version))
    error_message = "redis_version must look like REDIS_7_2."
  }
}

variable "subnet_cidr" {
  description = "CIDR of the subnet the services' direct VPC egress uses when store = redis (at least a /26)."
  type        = string
  default     = "10.8.0.0/24"
  validation {
    condition     = can(cidrnetmask(var.subnet_cidr)) && tonumber(split("/", var.subnet_cidr)[1]) <= 26
    error_message = "subnet_cidr must be an IPv4 CIDR of size /26 or larger."
  }
}

# --- secrets --------------------------------------------------------------------------------

variable "generate_admin_token" {
  description = "true: Terraform generates the admin token into Secret Manager (it is then also in the state). false: Terraform creates the empty secret; add a version out of band before the API can start."
  type        = bool
  default     = true
}
