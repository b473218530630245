# execution_mode = "cloud-tasks", store = "gcs": the API enqueues to Cloud Tasks, a private
# worker service runs pw.x. scripts/terraform-check.sh plans this file offline.
project        = "zpe-example"
region         = "europe-west1"
execution_mode = "cloud-tasks"
store          = "gcs"

api_image    = "europe-west1-docker.pkg.dev/zpe-example/zpe-images/zpe-api@sha256:1111111111111111111111111111111111111111111111111111111111111111"
worker_image = "europe-west1-docker.pkg.dev/zpe-example/zpe-images/zpe-worker@sha256:2222222222222222222222222222222222222222222222222222222222222222"
qe_version   = "6.7MaX"

api_invoker_members = ["group:zpe-users@example.com"]
