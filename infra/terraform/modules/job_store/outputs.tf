output "store_url" {
  description = "ZPE_STORE_URL for store = gcs (gs://BUCKET/PREFIX); null for redis (see redis_url)."
  value       = local.gcs ? "gs://${google_storage_bucket.this[0].name}/${var.store_prefix}" : null
}

output "bucket_name" {
  description = "The job-store bucket (store = gcs), else null."
  value       = local.gcs ? google_storage_bucket.this[0].name : null
}

output "redis_url" {
  description = "ZPE_STORE_URL for store = redis: rediss:// with the AUTH string, TLS verified against the mounted server CA, artifact expiry. Goes to Secret Manager only."
  sensitive   = true
  value = local.redis ? format(
    "rediss://:%s@%s:%d/0?ssl_ca_certs=%s&retention=%d",
    urlencode(google_redis_instance.this[0].auth_string),
    google_redis_instance.this[0].host,
    google_redis_instance.this[0].port,
    var.redis_ca_path,
    var.artifact_retention_days * 86400,
  ) : null
}

output "redis_ca_cert" {
  description = "PEM of the Memorystore server CA (store = redis), else null."
  value       = local.redis ? google_redis_instance.this[0].server_ca_certs[0].cert : null
}

output "vpc" {
  description = "Network and subnetwork for the services' direct VPC egress (store = redis), else null."
  value = local.redis ? {
    network    = google_compute_network.this[0].id
    subnetwork = google_compute_subnetwork.this[0].id
  } : null
}
