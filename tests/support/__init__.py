"""Shared test support: the Kubernetes API emulator, kubeconfigs, the S3 server."""
