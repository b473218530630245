# Secrets live in Secret Manager and reach the containers only as secret references
# (env value_source.secret_key_ref, or a secret volume): never as plain variables, env
# values or outputs.

# --- admin token (ZPE_ADMIN_TOKEN): the API only ------------------------------------------

# generate_admin_token = true: Terraform generates the token and stores a version (the value is
# then also in the Terraform state, which must be protected). false: Terraform creates only the
# secret; add versions out of band (`gcloud secrets versions add`, see docs/deploy.md).
resource "random_password" "admin_token" {
  count = var.generate_admin_token ? 1 : 0

  length  = 48
  special = false
}

resource "google_secret_manager_secret" "admin_token" {
  project   = var.project
  secret_id = "${var.name_prefix}-admin-token"
  labels    = { component = "api" }

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "admin_token" {
  count = var.generate_admin_token ? 1 : 0

  secret      = google_secret_manager_secret.admin_token.id
  secret_data = random_password.admin_token[0].result
}

resource "google_secret_manager_secret_iam_member" "api_admin_token" {
  project   = var.project
  secret_id = google_secret_manager_secret.admin_token.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.api.email}"
}

# --- store = "redis": the store URL (it carries the AUTH string) and the server CA --------

resource "google_secret_manager_secret" "store_url" {
  count = local.use_redis ? 1 : 0

  project   = var.project
  secret_id = "${var.name_prefix}-store-url"
  labels    = { component = "job-store" }

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "store_url" {
  count = local.use_redis ? 1 : 0

  secret      = google_secret_manager_secret.store_url[0].id
  secret_data = module.job_store.redis_url
}

resource "google_secret_manager_secret" "redis_ca" {
  count = local.use_redis ? 1 : 0

  project   = var.project
  secret_id = "${var.name_prefix}-redis-ca"
  labels    = { component = "job-store" }

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "redis_ca" {
  count = local.use_redis ? 1 : 0

  secret      = google_secret_manager_secret.redis_ca[0].id
  secret_data = module.job_store.redis_ca_cert
}

resource "google_secret_manager_secret_iam_member" "api_store_url" {
  count = local.use_redis ? 1 : 0

  project   = var.project
  secret_id = google_secret_manager_secret.store_url[0].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.api.email}"
}

resource "google_secret_manager_secret_iam_member" "api_redis_ca" {
  count = local.use_redis ? 1 : 0

  project   = var.project
  secret_id = google_secret_manager_secret.redis_ca[0].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.api.email}"
}

resource "google_secret_manager_secret_iam_member" "worker_store_url" {
  count = local.use_redis && local.cloud_tasks ? 1 : 0

  project   = var.project
  secret_id = google_secret_manager_secret.store_url[0].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.worker[0].email}"
}

resource "google_secret_manager_secret_iam_member" "worker_redis_ca" {
  count = local.use_redis && local.cloud_tasks ? 1 : 0

  project   = var.project
  secret_id = google_secret_manager_secret.redis_ca[0].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.worker[0].email}"
}
