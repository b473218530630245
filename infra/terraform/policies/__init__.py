"""Custom checkov policies for this configuration (loaded with --external-checks-dir)."""
