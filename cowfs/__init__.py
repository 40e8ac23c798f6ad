"""cowfs: AI-agent workspaces in an S3-compatible bucket, mounted as plain directories."""

__version__ = "0.1.0"
