output "id" {
  description = "Full queue id, projects/P/locations/L/queues/Q (ZPE_TASKS_QUEUE)."
  value       = google_cloud_tasks_queue.this.id
}

output "name" {
  description = "Queue name."
  value       = google_cloud_tasks_queue.this.name
}
