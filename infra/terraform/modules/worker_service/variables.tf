variable "project" {
  description = "GCP project id."
  type        = string
}

variable "region" {
  description = "Cloud Run region (the queue's region)."
  type        = string
}

variable "name" {
  description = "Service name."
  type        = string
}

variable "image" {
  description = "Worker image reference (by digest from cloudbuild.yaml); required in cloud-tasks mode."
  type        = string
  nullable    = false
}

variable "service_account_email" {
  description = "The worker's own service account."
  type        = string
}

variable "invoker_email" {
  description = "The tasks-invoker service account: the only member with roles/run.invoker on the worker."
  type        = string
}

variable "audience" {
  description = "Custom OIDC audience of push requests (Cloud Run accepts it; the app checks it)."
  type        = string
}

variable "cpu" {
  description = "vCPU limit."
  type        = string
}

variable "memory" {
  description = "Memory limit."
  type        = string
}

variable "concurrency" {
  description = "max_instance_request_concurrency (tasks per instance)."
  type        = number
  default     = 1
}

variable "timeout_seconds" {
  description = "Request timeout in seconds: one task must finish in it."
  type        = number
  default     = 3600
}

variable "min_instances" {
  description = "Minimum instances."
  type        = number
  default     = 0
}

variable "max_instances" {
  description = "Maximum instances."
  type        = number
}

variable "env" {
  description = "Plain environment variables (no secrets)."
  type        = map(string)
}

variable "secret_env" {
  description = "Environment variables from Secret Manager: name -> secret id (latest version)."
  type        = map(string)
  default     = {}
}

variable "secret_files" {
  description = "Secrets mounted as files: volume name -> {secret, mount_path, file_name}."
  type = map(object({
    secret     = string
    mount_path = string
    file_name  = string
  }))
  default = {}
}

variable "vpc" {
  description = "Direct VPC egress {network, subnetwork} (store = redis), or null."
  type = object({
    network    = string
    subnetwork = string
  })
  default = null
}
