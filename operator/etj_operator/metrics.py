"""The operator's own Prometheus metrics (served on OperatorConfig.metrics_port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_BY_PHASE = Gauge(
    "etj_jobs",
    "EfficientTrainingJobs known to this operator, by phase.",
    ["phase"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "etj_reconcile_duration_seconds",
    "Time to observe a job, decide and apply one lifecycle plan.",
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter(
    "etj_reconcile_errors_total",
    "Reconciles that ended in an error (retried on the next cycle).",
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "etj_api_requests_total",
    "Kubernetes API requests made through the operator's API wrapper.",
    ["verb", "resource", "code"],
    registry=REGISTRY,
)
GANG_RESTARTS = Counter(
    "etj_gang_restarts_total",
    "Whole-gang restarts after a worker pod failed.",
    ["namespace", "job"],
    registry=REGISTRY,
)


def serve(port: int) -> None:
    """Serve the metrics on 0.0.0.0:port (no-op when port is 0)."""
    if port:
        start_http_server(port, registry=REGISTRY)
