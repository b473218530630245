# execution_mode = "inprocess": the API alone runs its own worker processes (mock engine on
# Cloud Run: the API image has no pw.x).
project        = "zpe-example"
region         = "europe-west1"
execution_mode = "inprocess"
store          = "gcs"

api_image = "europe-west1-docker.pkg.dev/zpe-example/zpe-images/zpe-api@sha256:1111111111111111111111111111111111111111111111111111111111111111"
