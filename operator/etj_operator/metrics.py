"""The operator's own Prometheus metrics (served on OperatorConfig.metrics_port).

Families labelled per job (``namespace``, ``job`` and maybe more labels) are declared with :func:`_per_job`,
which lists them in :data:`PER_JOB_FAMILIES`; :func:`forget_job` removes every series of a deleted job from
each of them, so no family keeps the series of jobs that are gone (tests/unit/test_metrics.py checks that
every family with a ``job`` label is listed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

REGISTRY = CollectorRegistry(auto_describe=True)

#: The labels that name a job; every per-job family starts with them.
JOB_LABELS: Final = ("namespace", "job")


@dataclass(frozen=True)
class PerJobFamily:
    """A metric family with series per job, and its label names (``namespace``, ``job``, then any others)."""

    metric: MetricWrapperBase
    labelnames: tuple[str, ...]


#: Every per-job family, in declaration order (filled by :func:`_per_job`).
PER_JOB_FAMILIES: list[PerJobFamily] = []

_M = TypeVar("_M", Counter, Gauge)


def _per_job(kind: type[_M], name: str, documentation: str, extra_labels: tuple[str, ...] = ()) -> _M:
    """Declare a family labelled ``namespace``, ``job`` (then ``extra_labels``) and list it as per-job."""
    labelnames = (*JOB_LABELS, *extra_labels)
    metric = kind(name, documentation, labelnames, registry=REGISTRY)
    PER_JOB_FAMILIES.append(PerJobFamily(metric, labelnames))
    return metric


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
GANG_RESTARTS = _per_job(
    Counter,
    "etj_gang_restarts_total",
    "Whole-gang restarts after a worker pod failed.",
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
JOB_ENERGY_JOULES = _per_job(
    Gauge,
    "etj_job_energy_joules",
    "Energy used by a job's GPUs so far (J), as accounted in its status.",
)
JOB_POWER_WATTS = _per_job(
    Gauge,
    "etj_job_power_watts",
    "A job's current GPU power draw (W), summed over its GPUs.",
)
JOB_POWER_LIMIT_WATTS = _per_job(
    Gauge,
    "etj_job_power_limit_watts",
    "Per-GPU power limit the operator asks of the job's harness (W); 0 when none.",
)
JOB_CARBON_GRAMS = _per_job(
    Gauge,
    "etj_job_carbon_grams",
    "Emissions accounted to a job so far (gCO2e).",
)
POLICY_DECISIONS = _per_job(
    Counter,
    "etj_policy_decisions_total",
    "Energy policy decisions taken (throttle, release, checkpoint, stop, suspend, pause, resume, reschedule).",
    extra_labels=("decision",),
)


def forget_job(namespace: str, job: str) -> None:
    """Remove every series of the job ``namespace/job`` from every per-job family (the job is gone)."""
    for family in PER_JOB_FAMILIES:
        children: set[tuple[str, ...]] = set()
        for collected in family.metric.collect():
            for sample in collected.samples:
                labels = sample.labels
                if labels.get("namespace") == namespace and labels.get("job") == job:
                    children.add(tuple(labels[n] for n in family.labelnames))
        for labelvalues in children:
            family.metric.remove(*labelvalues)


def serve(port: int) -> None:
    """Serve the metrics on 0.0.0.0:port (no-op when port is 0)."""
    if port:
        start_http_server(port, registry=REGISTRY)
