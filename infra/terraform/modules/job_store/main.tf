# The job store: one shared, compare-and-swap store for the API and the worker.
#
#   store = "gcs"   - a private bucket (uniform access, public access prevention enforced,
#                     versioned, lifecycle for finished jobs' artifacts) and objectAdmin on
#                     this bucket for the given identities. ZPE_STORE_URL = gs://BUCKET/PREFIX.
#   store = "redis" - a Memorystore instance (AUTH + TLS) on a dedicated VPC, and the subnet
#                     the Cloud Run services reach it through (direct VPC egress: no Serverless
#                     VPC Access connector VMs to run or pay for). The URL, with its AUTH
#                     string, leaves this module only as a sensitive output for Secret Manager.

locals {
  gcs   = var.store == "gcs"
  redis = var.store == "redis"
}

# --- store = "gcs" --------------------------------------------------------------------------

resource "google_storage_bucket" "this" {
  #checkov:skip=CKV_GCP_62:Usage logs would need a second bucket; data access is audited with Cloud Audit Logs (DATA_READ/DATA_WRITE for storage.googleapis.com), see docs/deploy.md.
  count = local.gcs ? 1 : 0

  project  = var.project
  name     = "${var.project}-${var.name_prefix}-jobs"
  location = var.bucket_location

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy

  # Every compare-and-swap supersedes a generation; versions allow recovery from a bad
  # deploy and are deleted after noncurrent_retention_days by the rule below.
  versioning {
    enabled = true
  }

  # Finished jobs' artifacts (summary.txt, freqs.csv, result JSON) live under PREFIX/blobs/.
  lifecycle_rule {
    condition {
      age            = var.artifact_retention_days
      matches_prefix = ["${var.store_prefix}/blobs/"]
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }
}

# objectAdmin on this bucket only (never storage.* at project level).
resource "google_storage_bucket_iam_member" "object_admin" {
  for_each = local.gcs ? var.object_admin_emails : {}

  bucket = google_storage_bucket.this[0].name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${each.value}"
}

# --- store = "redis" ------------------------------------------------------------------------

resource "google_compute_network" "this" {
  count = local.redis ? 1 : 0

  project                 = var.project
  name                    = "${var.name_prefix}-net"
  auto_create_subnetworks = false
}

resource "google_compute_subnetwork" "this" {
  #checkov:skip=CKV_GCP_76:IPv4-only subnet; there is no IPv6 range to give private Google access to.
  count = local.redis ? 1 : 0

  project                  = var.project
  name                     = "${var.name_prefix}-run"
  region                   = var.region
  network                  = google_compute_network.this[0].id
  ip_cidr_range            = var.subnet_cidr
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_5_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Nothing needs to connect into this network: Cloud Run egress and Memorystore's peering
# are outbound from the subnet. Deny all ingress explicitly (and log it).
resource "google_compute_firewall" "deny_ingress" {
  count = local.redis ? 1 : 0

  project   = var.project
  name      = "${var.name_prefix}-deny-ingress"
  network   = google_compute_network.this[0].id
  direction = "INGRESS"
  priority  = 65534

  deny {
    protocol = "all"
  }
  source_ranges = ["0.0.0.0/0"]

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_redis_instance" "this" {
  count = local.redis ? 1 : 0

  project            = var.project
  region             = var.region
  name               = "${var.name_prefix}-store"
  display_name       = "ZPE job store"
  tier               = var.redis_tier
  memory_size_gb     = var.redis_memory_size_gb
  redis_version      = var.redis_version
  authorized_network = google_compute_network.this[0].id
  connect_mode       = "DIRECT_PEERING"

  auth_enabled            = true
  transit_encryption_mode = "SERVER_AUTHENTICATION"

  persistence_config {
    persistence_mode    = "RDB"
    rdb_snapshot_period = "ONE_HOUR"
  }
}
