# execution_mode = "http-pull", store = "gcs": a public API; pull workers outside GCP lease
# tasks with worker tokens (docs/pull-workers.md).
project        = "zpe-example"
region         = "europe-west1"
execution_mode = "http-pull"
store          = "gcs"

api_image  = "europe-west1-docker.pkg.dev/zpe-example/zpe-images/zpe-api@sha256:1111111111111111111111111111111111111111111111111111111111111111"
qe_version = "qe-6.7MaX"
