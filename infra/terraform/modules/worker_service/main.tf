# The compute plane on Cloud Run v2 (cloud-tasks mode): Cloud Tasks pushes one task per
# request to POST /internal/tasks/run, the worker runs pw.x for it and answers when done.
#
# Not public, by two independent layers:
#   - ingress INTERNAL_ONLY: only sources inside the project (VPC, and Google services such
#     as Cloud Tasks in the same project) reach the URL at all; the internet does not.
#     Cloud Tasks HTTP push from a queue in the same project counts as internal, which is
#     why this works without a load balancer (docs/deploy.md, "Why internal ingress").
#   - IAM: roles/run.invoker is granted to the tasks-invoker service account only, whose
#     OIDC token Cloud Tasks attaches to each push. No allUsers, no allAuthenticatedUsers.

resource "google_cloud_run_v2_service" "this" {
  project             = var.project
  location            = var.region
  name                = var.name
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = false # stateless; switching execution_mode away from cloud-tasks removes it
  labels              = { component = "worker" }
  # A fixed audience known before the service exists (its URL is not), so the API and the
  # worker agree on it without a dependency cycle; Cloud Run accepts tokens minted for it.
  custom_audiences = [var.audience]

  template {
    service_account                  = var.service_account_email
    timeout                          = "${var.timeout_seconds}s"
    max_instance_request_concurrency = var.concurrency
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"
    labels                           = { component = "worker" }

    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }

    dynamic "vpc_access" {
      for_each = var.vpc == null ? [] : [var.vpc]
      content {
        egress = "PRIVATE_RANGES_ONLY"
        network_interfaces {
          network    = vpc_access.value.network
          subnetwork = vpc_access.value.subnetwork
        }
      }
    }

    dynamic "volumes" {
      for_each = var.secret_files
      content {
        name = volumes.key
        secret {
          secret = volumes.value.secret
          items {
            version = "latest"
            path    = volumes.value.file_name
          }
        }
      }
    }

    containers {
      name  = "worker"
      image = var.image

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = var.cpu
          memory = var.memory
        }
        # CPU always allocated: lease heartbeats and pw.x keep running for the whole task,
        # and a revision shutting down gets its SIGTERM grace period with CPU.
        cpu_idle          = false
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = var.env
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = var.secret_env
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = env.value
              version = "latest"
            }
          }
        }
      }

      dynamic "volume_mounts" {
        for_each = var.secret_files
        content {
          name       = volume_mounts.key
          mount_path = volume_mounts.value.mount_path
        }
      }

      startup_probe {
        http_get {
          path = "/healthz"
        }
        period_seconds    = 2
        timeout_seconds   = 2
        failure_threshold = 30
      }

      liveness_probe {
        http_get {
          path = "/healthz"
        }
        period_seconds    = 30
        timeout_seconds   = 5
        failure_threshold = 3
      }
    }
  }

  lifecycle {
    precondition {
      condition     = length(setintersection(keys(var.env), keys(var.secret_env))) == 0
      error_message = "A variable is both in env and secret_env."
    }
  }
}

# The only invoker: the identity on Cloud Tasks' OIDC tokens.
resource "google_cloud_run_v2_service_iam_member" "tasks_invoker" {
  project  = google_cloud_run_v2_service.this.project
  location = google_cloud_run_v2_service.this.location
  name     = google_cloud_run_v2_service.this.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${var.invoker_email}"
}
