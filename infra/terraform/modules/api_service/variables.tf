variable "project" {
  description = "GCP project id."
  type        = string
}

variable "region" {
  description = "Cloud Run region."
  type        = string
}

variable "name" {
  description = "Service name."
  type        = string
}

variable "image" {
  description = "API image reference (by digest from cloudbuild.yaml)."
  type        = string
  nullable    = false
}

variable "service_account_email" {
  description = "The API's own service account."
  type        = string
}

variable "ingress" {
  description = "INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
  type        = string
  validation {
    condition     = contains(["INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"], var.ingress)
    error_message = "ingress must be a Cloud Run v2 ingress value."
  }
}

variable "allow_unauthenticated" {
  description = "Grant roles/run.invoker to allUsers."
  type        = bool
  default     = false
}

variable "invoker_members" {
  description = "IAM members granted roles/run.invoker when the service is not public."
  type        = list(string)
  default     = []
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
  description = "max_instance_request_concurrency."
  type        = number
}

variable "timeout_seconds" {
  description = "Request timeout in seconds."
  type        = number
}

variable "min_instances" {
  description = "Minimum instances."
  type        = number
}

variable "max_instances" {
  description = "Maximum instances."
  type        = number
}

variable "cpu_always_allocated" {
  description = "true: cpu_idle = false (CPU allocated outside requests)."
  type        = bool
}

variable "deletion_protection" {
  description = "Cloud Run deletion protection."
  type        = bool
  default     = false
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
