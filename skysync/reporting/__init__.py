"""Read-only views for operators: status, CLI reports, Prometheus metrics."""
