"""Telemetry sources: where GPU power and energy readings come from (Prometheus or Direct scrapes)."""
