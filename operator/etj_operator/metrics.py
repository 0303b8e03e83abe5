"""The operator's own Prometheus metrics (served on OperatorConfig.metrics_port; docs/telemetry.md lists them).

Names follow Prometheus' conventions: the unit in the name (``_joules``, ``_grams``, ``_watts``, ``_seconds``),
``_total`` on counters. A job is named by ``namespace`` and ``job_name``, never ``job``: Prometheus gives every
series the ``job`` label of its scrape job, so a ``job`` label of the operator's would be renamed
``exported_job`` (or, with honor_labels, hide the scrape job).

Per-job series come in two kinds:

* **The job's account, from its status** (:data:`JOB_STATUS`, a collector read at each scrape):
  ``etj_job_energy_joules_total``, ``etj_job_carbon_grams_total`` and
  ``etj_telemetry_rejected_samples_total`` are the totals the operator last wrote into the job's status
  (:func:`export_job`), and ``etj_job_power_watts`` and ``etj_job_power_limit_watts`` the figures of that
  status. The totals live in the status and only grow, so they are counters that stay monotone across operator
  restarts and failovers: a new operator exposes the values the job has, not a counter starting from 0
  that would add the job's energy again. A figure nobody measured (no reading yet, power unknown this cycle,
  no cap asked) has no series, never a 0.
* **Events of this process**, declared with :func:`_per_job` and listed in :data:`PER_JOB_FAMILIES`:
  ``etj_gang_restarts_total``, ``etj_policy_decisions_total``; ordinary counters, which start from 0 with the
  process like any counter.

:func:`forget_job` removes every series of a deleted job from both, so no family keeps the series of jobs that
are gone (tests/unit/test_metrics.py checks that every family with a job label is covered).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from etj_contract import CONTROL, ENERGY, FORECAST, JOULES_PER_KWH, ControlSection, EnergySection, ForecastSection

REGISTRY = CollectorRegistry(auto_describe=True)

#: The labels that name a job; every per-job family starts with them (kube-state-metrics' ``job_name``).
JOB_LABELS: Final = ("namespace", "job_name")

#: The families read from the jobs' status (:class:`JobStatusCollector`).
ENERGY_JOULES: Final = "etj_job_energy_joules_total"
CARBON_GRAMS: Final = "etj_job_carbon_grams_total"
REJECTED_SAMPLES: Final = "etj_telemetry_rejected_samples_total"
POWER_WATTS: Final = "etj_job_power_watts"
POWER_LIMIT_WATTS: Final = "etj_job_power_limit_watts"
#: The forecast (status.forecast): the time to completion and the energy at completion.
FORECAST_REMAINING_SECONDS: Final = "etj_job_forecast_remaining_seconds"
FORECAST_ENERGY_JOULES: Final = "etj_job_forecast_energy_at_completion_joules"
#: The energy breakdown (status.energy.breakdown): measured energy attributed, and the modelled network energy.
COMPUTE_JOULES: Final = "etj_job_energy_compute_joules_total"
COMMUNICATION_JOULES: Final = "etj_job_energy_communication_joules_total"
NETWORK_JOULES_MODELLED: Final = "etj_job_network_energy_modelled_joules"


@dataclass(frozen=True)
class PerJobFamily:
    """A metric family with series per job, and its label names (``namespace``, ``job_name``, then others)."""

    metric: MetricWrapperBase
    labelnames: tuple[str, ...]


#: Every per-job family of this process's events, in declaration order (filled by :func:`_per_job`).
PER_JOB_FAMILIES: list[PerJobFamily] = []

_M = TypeVar("_M", Counter, Gauge)


def _per_job(kind: type[_M], name: str, documentation: str, extra_labels: tuple[str, ...] = ()) -> _M:
    """Declare a family labelled ``namespace``, ``job_name`` (then ``extra_labels``) and list it as per-job."""
    labelnames = (*JOB_LABELS, *extra_labels)
    metric = kind(name, documentation, labelnames, registry=REGISTRY)
    PER_JOB_FAMILIES.append(PerJobFamily(metric, labelnames))
    return metric


@dataclass(frozen=True)
class JobFigures:
    """One job's figures as its status holds them; None: not measured (no series)."""

    #: ``status.energy.joules``. Units: J.
    joules: float | None = None
    #: ``status.energy.gramsCO2e``. Units: gCO2e.
    grams_co2e: float | None = None
    #: ``status.energy.currentWatts``: the job's power in its last telemetry cycle. Units: W.
    watts: float | None = None
    #: ``status.control.powerLimitWattsPerGPU``: the per-GPU cap the operator asks. Units: W.
    power_limit_watts: float | None = None
    #: ``status.energy.rejectedSamples``: samples the accounting refused, by reason (cumulative).
    rejected_samples: Mapping[str, int] = field(default_factory=dict)
    #: ``status.forecast.remainingSeconds``: the forecast time to completion. Units: s.
    forecast_remaining_seconds: float | None = None
    #: ``status.forecast.energyAtCompletionKilowattHours``, in J.
    forecast_energy_joules: float | None = None
    #: ``status.energy.breakdown``: the energy attributed to compute and to communication (measured). Units: J.
    compute_joules: float | None = None
    communication_joules: float | None = None
    #: ``status.energy.breakdown.networkJoulesModelled``: the network's energy, modelled (not the GPUs'). Units: J.
    network_joules_modelled: float | None = None

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> JobFigures:
        """Read the figures from a job's status (as the operator wrote it; malformed fields count as absent)."""
        raw = status.get(ENERGY)
        energy = None if raw is None else EnergySection.from_status(raw)
        measured = energy is not None and energy.measured
        limit = ControlSection.from_status(status.get(CONTROL)).power_limit_watts_per_gpu
        forecast = ForecastSection.from_status(status.get(FORECAST))
        at_completion = forecast.energy_at_completion_kwh
        split = energy.breakdown if energy is not None and measured else None
        return cls(
            joules=energy.joules if energy is not None and measured else None,
            grams_co2e=energy.grams_co2e if energy is not None and measured else None,
            watts=None if energy is None else energy.current_watts,
            power_limit_watts=None if limit is None else float(limit),
            rejected_samples={} if energy is None else dict(energy.rejected_samples),
            forecast_remaining_seconds=forecast.remaining_seconds,
            forecast_energy_joules=None if at_completion is None else at_completion * JOULES_PER_KWH,
            compute_joules=None if split is None else split.compute_joules,
            communication_joules=None if split is None else split.communication_joules,
            network_joules_modelled=None if split is None else split.network_joules_modelled,
        )


class JobStatusCollector(Collector):
    """Exposes each job's :class:`JobFigures` at scrape time (counters read from the status, not counted here).

    Thread-safe: the reconciler sets figures on the event loop, the metrics server collects in its own thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], JobFigures] = {}

    def set(self, namespace: str, job_name: str, figures: JobFigures) -> None:
        """Record the figures the operator last wrote for the job."""
        with self._lock:
            self._jobs[(namespace, job_name)] = figures

    def forget(self, namespace: str, job_name: str) -> None:
        """Drop the job's series (it is gone)."""
        with self._lock:
            self._jobs.pop((namespace, job_name), None)

    def figures(self, namespace: str, job_name: str) -> JobFigures | None:
        """The figures recorded for the job, if any."""
        with self._lock:
            return self._jobs.get((namespace, job_name))

    def describe(self) -> Iterable[Metric]:
        """The families, without samples (for the registry's name check)."""
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        """The families with one sample per job and figure that is known."""
        with self._lock:
            jobs = dict(self._jobs)
        return self._families(jobs)

    @staticmethod
    def _families(jobs: Mapping[tuple[str, str], JobFigures]) -> list[Metric]:
        energy = CounterMetricFamily(
            ENERGY_JOULES, "Energy used by a job's GPUs (J), as accounted in its status.", labels=JOB_LABELS
        )
        carbon = CounterMetricFamily(
            CARBON_GRAMS, "Emissions accounted to a job (gCO2e), as in its status.", labels=JOB_LABELS
        )
        rejected = CounterMetricFamily(
            REJECTED_SAMPLES,
            "Telemetry samples the energy accounting refused for a job, by reason (status.energy.rejectedSamples).",
            labels=(*JOB_LABELS, "reason"),
        )
        power = GaugeMetricFamily(
            POWER_WATTS,
            "A job's GPU power (W), summed over its GPUs, in its last telemetry cycle; absent when unknown.",
            labels=JOB_LABELS,
        )
        limit = GaugeMetricFamily(
            POWER_LIMIT_WATTS,
            "Per-GPU power limit the operator asks for a job (W); absent when it asks none.",
            labels=JOB_LABELS,
        )
        compute = CounterMetricFamily(
            COMPUTE_JOULES,
            "A job's GPU energy attributed to compute (J): measured, split by rank 0's communication time.",
            labels=JOB_LABELS,
        )
        communication = CounterMetricFamily(
            COMMUNICATION_JOULES,
            "A job's GPU energy attributed to gradient communication (J; overlapped time counts here: an upper bound).",
            labels=JOB_LABELS,
        )
        network = GaugeMetricFamily(
            NETWORK_JOULES_MODELLED,
            "MODELLED energy of the network carrying a job's gradient traffic (J): bytes x energy per bit; unmeasured.",
            labels=JOB_LABELS,
        )
        remaining = GaugeMetricFamily(
            FORECAST_REMAINING_SECONDS,
            "A job's forecast time to completion (s, status.forecast.remainingSeconds); absent while unknown.",
            labels=JOB_LABELS,
        )
        at_completion = GaugeMetricFamily(
            FORECAST_ENERGY_JOULES,
            "A job's forecast energy at completion (J): measured so far plus to completion; absent while unknown.",
            labels=JOB_LABELS,
        )
        for (namespace, job_name), figures in sorted(jobs.items()):
            labels = [namespace, job_name]
            for family, value in (
                (compute, figures.compute_joules),
                (communication, figures.communication_joules),
                (network, figures.network_joules_modelled),
            ):
                if value is not None:
                    family.add_metric(labels, value)
            if figures.joules is not None:
                energy.add_metric(labels, figures.joules)
            if figures.grams_co2e is not None:
                carbon.add_metric(labels, figures.grams_co2e)
            for reason, count in sorted(figures.rejected_samples.items()):
                rejected.add_metric([*labels, reason], count)
            if figures.watts is not None:
                power.add_metric(labels, figures.watts)
            if figures.power_limit_watts is not None:
                limit.add_metric(labels, figures.power_limit_watts)
            if figures.forecast_remaining_seconds is not None:
                remaining.add_metric(labels, figures.forecast_remaining_seconds)
            if figures.forecast_energy_joules is not None:
                at_completion.add_metric(labels, figures.forecast_energy_joules)
        return [energy, carbon, rejected, power, limit, compute, communication, network, remaining, at_completion]


JOB_STATUS = JobStatusCollector()
REGISTRY.register(JOB_STATUS)

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
POLICY_DECISIONS = _per_job(
    Counter,
    "etj_policy_decisions_total",
    "Energy policy decisions taken (throttle, release, checkpoint, stop, suspend, pause, resume, reschedule).",
    extra_labels=("decision",),
)


def export_job(namespace: str, job_name: str, status: Mapping[str, Any]) -> None:
    """Expose the figures of the status just written for the job (replacing the last ones)."""
    JOB_STATUS.set(namespace, job_name, JobFigures.from_status(status))


def forget_job(namespace: str, job_name: str) -> None:
    """Remove every series of the job ``namespace/job_name`` from every per-job family (the job is gone)."""
    JOB_STATUS.forget(namespace, job_name)
    for family in PER_JOB_FAMILIES:
        children: set[tuple[str, ...]] = set()
        for collected in family.metric.collect():
            for sample in collected.samples:
                labels = sample.labels
                if labels.get("namespace") == namespace and labels.get("job_name") == job_name:
                    children.add(tuple(labels[n] for n in family.labelnames))
        for labelvalues in children:
            family.metric.remove(*labelvalues)


def serve(port: int) -> None:
    """Serve the metrics on 0.0.0.0:port (no-op when port is 0)."""
    if port:
        start_http_server(port, registry=REGISTRY)
