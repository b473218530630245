variable "project" {
  description = "GCP project id."
  type        = string
}

variable "region" {
  description = "Region of the Redis instance and the subnet."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of resource names."
  type        = string
}

variable "store" {
  description = "gcs or redis."
  type        = string
  validation {
    condition     = contains(["gcs", "redis"], var.store)
    error_message = "store must be gcs or redis."
  }
}

variable "bucket_location" {
  description = "Bucket location (store = gcs)."
  type        = string
}

variable "store_prefix" {
  description = "Store prefix inside the bucket (gs://BUCKET/PREFIX)."
  type        = string
}

variable "artifact_retention_days" {
  description = "Days artifacts are kept (bucket lifecycle, or Redis expiry via the store URL's retention parameter)."
  type        = number
}

variable "noncurrent_retention_days" {
  description = "Days superseded object versions are kept."
  type        = number
}

variable "force_destroy" {
  description = "Allow destroying a non-empty bucket."
  type        = bool
  default     = false
}

variable "object_admin_emails" {
  description = "Service accounts granted roles/storage.objectAdmin on the bucket, keyed by a static name (api, worker)."
  type        = map(string)
}

variable "redis_tier" {
  description = "Memorystore tier."
  type        = string
}

variable "redis_memory_size_gb" {
  description = "Memorystore size in GiB."
  type        = number
}

variable "redis_version" {
  description = "Memorystore Redis version."
  type        = string
}

variable "subnet_cidr" {
  description = "CIDR of the subnet for Cloud Run direct VPC egress."
  type        = string
}

variable "redis_ca_path" {
  description = "Where the services find the Memorystore server CA (a secret volume); goes into the store URL."
  type        = string
}
