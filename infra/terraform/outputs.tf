# No secret values here: only names, URLs and identities.

output "execution_mode" {
  description = "The execution mode this deployment runs."
  value       = var.execution_mode
}

output "api_url" {
  description = "HTTPS URL of the API (ZPE_API_URL for the zpe CLI and for pull workers)."
  value       = module.api.uri
}

output "worker_url" {
  description = "HTTPS URL of the worker service (cloud-tasks mode; internal ingress, not reachable from the internet), else null."
  value       = local.cloud_tasks ? module.worker[0].uri : null
}

output "task_queue_id" {
  description = "Full id of the Cloud Tasks queue (projects/P/locations/L/queues/Q) in cloud-tasks mode, else null."
  value       = local.cloud_tasks ? module.task_queue[0].id : null
}

output "store_bucket" {
  description = "Name of the job-store bucket (store = gcs), else null."
  value       = module.job_store.bucket_name
}

output "store_url" {
  description = "ZPE_STORE_URL with store = gcs; with store = redis the URL carries the AUTH string and is only in Secret Manager (see store_url_secret)."
  value       = local.use_gcs ? module.job_store.store_url : null
}

output "store_url_secret" {
  description = "Secret Manager id holding ZPE_STORE_URL when store = redis, else null."
  value       = local.use_redis ? google_secret_manager_secret.store_url[0].id : null
}

output "admin_token_secret" {
  description = "Secret Manager id of the admin token (read it with gcloud secrets versions access latest --secret=...)."
  value       = google_secret_manager_secret.admin_token.id
}

output "image_repository" {
  description = "Artifact Registry path to push images to (REGION-docker.pkg.dev/PROJECT/REPO)."
  value       = "${google_artifact_registry_repository.images.location}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}"
}

output "service_accounts" {
  description = "Email of each service account this deployment created (api always; worker and invoker in cloud-tasks mode)."
  value = merge(
    { api = google_service_account.api.email },
    local.cloud_tasks ? {
      worker  = google_service_account.worker[0].email
      invoker = google_service_account.invoker[0].email
    } : {},
  )
}
