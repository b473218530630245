# The Cloud Tasks queue the API dispatches one push task per displacement to, and the only
# grant on it: the API may enqueue.

resource "google_cloud_tasks_queue" "this" {
  project  = var.project
  location = var.region
  name     = var.name

  rate_limits {
    max_dispatches_per_second = var.max_dispatches_per_second
    max_concurrent_dispatches = var.max_concurrent_dispatches
  }

  retry_config {
    max_attempts       = var.max_attempts
    min_backoff        = "${var.min_backoff_seconds}s"
    max_backoff        = "${var.max_backoff_seconds}s"
    max_doublings      = var.max_doublings
    max_retry_duration = var.max_retry_duration_seconds > 0 ? "${var.max_retry_duration_seconds}s" : null
  }

  stackdriver_logging_config {
    sampling_ratio = var.log_sampling_ratio
  }
}

resource "google_cloud_tasks_queue_iam_member" "enqueuer" {
  project  = google_cloud_tasks_queue.this.project
  location = google_cloud_tasks_queue.this.location
  name     = google_cloud_tasks_queue.this.name
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${var.enqueuer_email}"
}
