"""JSON logs with request/job/task context and redaction; Prometheus metrics."""
