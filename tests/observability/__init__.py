"""Observability: the operator's metrics, the Grafana dashboard and the Prometheus alerts."""
