# execution_mode = "cloud-tasks", store = "gcs": the API enqueues to Cloud Tasks, a private
# worker service runs pw.x. scripts/terraform-check.sh plans this file offline.
project        = "zpe-example"
region         = "europe-west1"
execution_mode = "cloud-tasks"
store          = "gcs"

api_image    = "europe-west1-docker.pkg.dev/zpe-example/zpe-images/zpe-api@sha256:1111111111111111111111111111111111111111111111111111111111111111"
worker_image = "europe-west1-docker.pkg.dev/zpe-example/zpe-images/zpe-worker@sha256:2222222222222222222222222222222222222222222222222222222222222222"
qe_version   = "qe-6.7MaX"

# One vCPU per worker instance (pw.x as mpirun -np 1): molecules the size of H2..NH3; slabs
# want worker_cpu = "4" and more memory.
worker_cpu = "1"

api_invoker_members = ["group:zpe-users@example.com"]
