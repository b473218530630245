# execution_mode = "cloud-tasks", store = "redis": Memorystore over direct VPC egress; the
# store URL (with its AUTH string) and the server CA reach the services from Secret Manager.
project        = "zpe-example"
region         = "europe-west1"
execution_mode = "cloud-tasks"
store          = "redis"
redis_tier     = "BASIC"

api_image    = "europe-west1-docker.pkg.dev/zpe-example/zpe-images/zpe-api@sha256:1111111111111111111111111111111111111111111111111111111111111111"
worker_image = "europe-west1-docker.pkg.dev/zpe-example/zpe-images/zpe-worker@sha256:2222222222222222222222222222222222222222222222222222222222222222"
qe_version   = "qe-6.7MaX"
