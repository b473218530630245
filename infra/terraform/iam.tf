# Identities. One per role, each with only what it needs (docs/deploy.md, "IAM"):
#
#   api      - runs the control plane. objectAdmin on the job-store bucket; secretAccessor on
#              the admin-token secret (and the store URL / Redis CA secrets with store = redis);
#              cloud-tasks mode: cloudtasks.enqueuer on this queue and serviceAccountUser on the
#              tasks-invoker account only (to put its identity on the OIDC token of each task).
#   worker   - runs the compute plane (cloud-tasks mode only). objectAdmin on the bucket; the
#              store secrets with store = redis. It cannot enqueue, invoke or read the admin token.
#   invoker  - the identity Cloud Tasks signs push requests with (cloud-tasks mode only).
#              run.invoker on the worker service and nothing else; nothing runs as it.
#
# No project-level role bindings are made: every grant is on one resource.

resource "google_service_account" "api" {
  project      = var.project
  account_id   = "${var.name_prefix}-api"
  display_name = "ZPE API (control plane)"
  description  = "Runs the ZPE API on Cloud Run: job store, admin token, enqueue to the ZPE task queue."

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "worker" {
  count = local.cloud_tasks ? 1 : 0

  project      = var.project
  account_id   = "${var.name_prefix}-worker"
  display_name = "ZPE worker (compute plane)"
  description  = "Runs the ZPE worker on Cloud Run: job store only."

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "invoker" {
  count = local.cloud_tasks ? 1 : 0

  project      = var.project
  account_id   = "${var.name_prefix}-invoker"
  display_name = "ZPE tasks invoker"
  description  = "Identity on the OIDC tokens Cloud Tasks sends to the ZPE worker; may only invoke the worker."

  depends_on = [google_project_service.apis]
}

# The API creates tasks whose oidc_token.service_account_email is the invoker: Cloud Tasks
# requires the caller to have iam.serviceAccounts.actAs on that account, granted here on
# that one account (never at project level).
resource "google_service_account_iam_member" "api_acts_as_invoker" {
  count = local.cloud_tasks ? 1 : 0

  service_account_id = google_service_account.invoker[0].name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.api.email}"
}
