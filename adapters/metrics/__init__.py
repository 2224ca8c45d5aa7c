"""Metrics exposition (Prometheus)."""
