"""Shared test support: the S3 and MLflow servers, a bare API server, users."""
