terraform {
  # 1.5: `check` blocks, `import` blocks and the validation features used in variables.tf.
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.x: google_cloud_run_v2_service.deletion_protection and direct VPC egress.
      version = "~> 6.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }

  # Remote state in a GCS bucket you create once, by hand, with versioning on:
  #   terraform init -backend-config="bucket=STATE_BUCKET" -backend-config="prefix=zpe/prod"
  # The state holds the generated admin token and the Redis AUTH string: only the
  # deployer identity may read that bucket.
  backend "gcs" {}
}
