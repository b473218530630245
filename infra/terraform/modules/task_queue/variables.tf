variable "project" {
  description = "GCP project id."
  type        = string
}

variable "region" {
  description = "Queue location (the worker's region)."
  type        = string
}

variable "name" {
  description = "Queue name (a deleted queue's name cannot be reused for about 7 days)."
  type        = string
}

variable "max_attempts" {
  description = "retry_config.max_attempts."
  type        = number
}

variable "min_backoff_seconds" {
  description = "retry_config.min_backoff in seconds."
  type        = number
}

variable "max_backoff_seconds" {
  description = "retry_config.max_backoff in seconds."
  type        = number
}

variable "max_doublings" {
  description = "retry_config.max_doublings."
  type        = number
}

variable "max_retry_duration_seconds" {
  description = "retry_config.max_retry_duration in seconds; 0: unset."
  type        = number
  default     = 0
}

variable "max_dispatches_per_second" {
  description = "rate_limits.max_dispatches_per_second."
  type        = number
}

variable "max_concurrent_dispatches" {
  description = "rate_limits.max_concurrent_dispatches."
  type        = number
}

variable "log_sampling_ratio" {
  description = "stackdriver_logging_config.sampling_ratio."
  type        = number
  default     = 1
}

variable "enqueuer_email" {
  description = "Service account granted roles/cloudtasks.enqueuer on this queue (the API)."
  type        = string
}
