"""What an operator sees: the broker's counters, Prometheus metrics, the
JSON monitoring endpoints, health, and the live dashboard."""
