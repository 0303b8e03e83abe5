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


TELEMETRY_CYCLE_SECONDS = Histogram(
    "etj_telemetry_cycle_seconds",
    "Time of one telemetry cycle (all jobs, all sources).",
    registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TELEMETRY_REQUESTS = Counter(
    "etj_telemetry_requests_total",
    "Requests made to telemetry backends (Prometheus queries, Direct pod scrapes).",
    ["source"],
    registry=REGISTRY,
)
TELEMETRY_ERRORS = Counter(
    "etj_telemetry_errors_total",
    "Telemetry cycles in which a source failed as a whole (e.g. Prometheus unreachable).",
    ["source"],
    registry=REGISTRY,
)
JOB_ENERGY_JOULES = Gauge(
    "etj_job_energy_joules",
    "Energy used by a job's GPUs so far (J), as accounted in its status.",
    ["namespace", "job"],
    registry=REGISTRY,
)
JOB_POWER_WATTS = Gauge(
    "etj_job_power_watts",
    "A job's current GPU power draw (W), summed over its GPUs.",
    ["namespace", "job"],
    registry=REGISTRY,
)
JOB_POWER_LIMIT_WATTS = Gauge(
    "etj_job_power_limit_watts",
    "Per-GPU power limit the operator asks of the job's harness (W); 0 when none.",
    ["namespace", "job"],
    registry=REGISTRY,
)
JOB_CARBON_GRAMS = Gauge(
    "etj_job_carbon_grams",
    "Emissions accounted to a job so far (gCO2e).",
    ["namespace", "job"],
    registry=REGISTRY,
)
POLICY_DECISIONS = Counter(
    "etj_policy_decisions_total",
    "Energy policy decisions taken (throttle, release, checkpoint, stop, suspend, pause, resume, reschedule).",
    ["namespace", "job", "decision"],
    registry=REGISTRY,
)


def forget_job(namespace: str, job: str) -> None:
    """Drop a deleted job's per-job series."""
    for gauge in (JOB_ENERGY_JOULES, JOB_POWER_WATTS, JOB_POWER_LIMIT_WATTS, JOB_CARBON_GRAMS):
        try:
            gauge.remove(namespace, job)
        except KeyError:
            pass


def serve(port: int) -> None:
    """Serve the metrics on 0.0.0.0:port (no-op when port is 0)."""
    if port:
        start_http_server(port, registry=REGISTRY)
