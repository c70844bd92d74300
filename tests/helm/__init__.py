"""Tests of the Helm chart (helm/tidetune): lint, render, validate, RBAC, values schema."""
