"""The operator's metrics: Prometheus' conventions, totals read from the job's status, nothing left of a gone job."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from etj_contract.sections import EnergySection, ForecastSection
from etj_operator import contract as c
from etj_operator import metrics
from etj_operator.config import OperatorConfig
from etj_operator.lifecycle import Plan
from etj_operator.ports import JobWriter
from etj_operator.reconciler import JobReconciler

NAMESPACE = "metrics-test"
ROOT = Path(__file__).resolve().parents[2]


class NoApi(JobWriter):
    """A JobWriter for tests that make no API call: any call is a failure."""

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        raise AssertionError("no API call expected")

    async def delete(self, kind: str, namespace: str | None, name: str, *, uid: str | None = None) -> bool:
        raise AssertionError("no API call expected")

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        raise AssertionError("no API call expected")

    async def patch_job_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        uid: str | None = None,
        status_exists: bool = True,
        term: str | None = None,
        stamp_resource_version: str | None = None,
    ) -> bool:
        raise AssertionError("no API call expected")


def _reconciler() -> JobReconciler:
    return JobReconciler(NoApi(), OperatorConfig(), lambda body, event: None)


def _registered_metrics() -> list[MetricWrapperBase]:
    # The registry keeps its collectors in a private map; reading it finds every family registered on it,
    # wherever it was declared (not only in metrics.py).
    return [c for c in metrics.REGISTRY._collector_to_names if isinstance(c, MetricWrapperBase)]


def _exposed() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every exposed sample: (sample name, sorted labels) -> value, read from the text exposition."""
    text = generate_latest(metrics.REGISTRY).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _job_series(namespace: str, job: str) -> dict[str, float]:
    """``name{other labels}`` -> value of every exposed sample of ``namespace/job``."""
    found = {}
    for (name, labels), value in _exposed().items():
        named = dict(labels)
        if named.get("namespace") == namespace and named.get("job_name") == job:
            rest = ",".join(f"{k}={v}" for k, v in labels if k not in ("namespace", "job_name"))
            found[f"{name}{{{rest}}}" if rest else name] = value
    return found


def _record(namespace: str, job: str) -> None:
    """Series of the job in every per-job family: from its status, and one or two events per event family."""
    metrics.export_job(
        namespace,
        job,
        {
            "energy": {"joules": 5.0, "gramsCO2e": 1.0, "currentWatts": 300.0, "rejectedSamples": {"x": 1}},
            "control": {c.CONTROL_POWER_LIMIT_WATTS_PER_GPU: 250},
            "forecast": ForecastSection(remaining_seconds=60.0, energy_at_completion_kwh=0.5).to_status(),
        },
    )
    for family in metrics.PER_JOB_FAMILIES:
        extra = family.labelnames[len(metrics.JOB_LABELS) :]
        choices: list[tuple[str, ...]] = [()] if not extra else [("a",) * len(extra), ("b",) * len(extra)]
        for values in choices:
            child: Any = family.metric.labels(namespace, job, *values)
            child.inc()


# --- conventions --------------------------------------------------------------------------------------------


def test_no_family_has_a_job_label_and_every_per_job_family_is_declared_per_job():
    _record(NAMESPACE, "labels")
    per_job = {id(f.metric): f for f in metrics.PER_JOB_FAMILIES}
    registered = _registered_metrics()
    assert registered, "no metric found on the operator's registry"
    for metric in registered:
        labelnames = tuple(metric._labelnames)
        name = metric._name
        assert "job" not in labelnames, f"{name}: `job` is the scrape job's label in Prometheus; use job_name"
        if "job_name" in labelnames or "namespace" in labelnames:
            assert id(metric) in per_job, (
                f"{name} is labelled {labelnames} but not declared with metrics._per_job: "
                "forget_job would leave its series of deleted jobs"
            )
            assert per_job[id(metric)].labelnames == labelnames, name
            assert labelnames[: len(metrics.JOB_LABELS)] == metrics.JOB_LABELS, name
    # Every listed family is registered (none declared on another registry, none listed twice).
    assert {id(m) for m in registered} >= set(per_job)
    assert len(per_job) == len(metrics.PER_JOB_FAMILIES)
    assert id(metrics.GANG_RESTARTS) in per_job and id(metrics.POLICY_DECISIONS) in per_job
    # and no exposed sample at all, from any collector, carries a `job` label
    assert not [key for key in _exposed() if "job" in dict(key[1])]
    metrics.forget_job(NAMESPACE, "labels")


#: Gauges that count or state something, and so have no unit.
UNITLESS_GAUGES = {"etj_jobs", "etj_leader"}


def test_names_follow_prometheus_conventions():
    units = ("_seconds", "_joules", "_grams", "_watts")
    families = {f.name: f for f in metrics.REGISTRY.collect()}
    assert families
    for name, family in families.items():
        assert name.startswith("etj_"), name
        if family.type == "histogram":
            assert name.endswith("_seconds"), name
        if family.type == "gauge":
            assert name.endswith(units) or name in UNITLESS_GAUGES, f"{name}: a gauge names its unit"
    counters = {n for n, f in families.items() if f.type == "counter"}
    # the cumulative figures are counters, with their units in their names
    assert {"etj_job_energy_joules", "etj_job_carbon_grams", "etj_telemetry_rejected_samples"} <= counters
    assert families["etj_job_power_watts"].type == "gauge"
    assert metrics.ENERGY_JOULES == "etj_job_energy_joules_total"


# --- the job's figures, from its status ---------------------------------------------------------------------


def test_the_totals_are_the_status_totals_and_a_new_operator_exposes_the_same_counters():
    status = {
        "energy": EnergySection(
            joules=7200.0, grams_co2e=0.8, current_watts=480.0, last_sample_seconds=100.0,
            rejected_samples={"counter_decrease": 2},
        ).to_status(),
        "control": {c.CONTROL_POWER_LIMIT_WATTS_PER_GPU: 240},
    }
    _reconciler()._export(NAMESPACE, "billed", Plan(status=status))
    expected = {
        "etj_job_energy_joules_total": 7200.0,
        "etj_job_carbon_grams_total": 0.8,
        "etj_telemetry_rejected_samples_total{reason=counter_decrease}": 2.0,
        "etj_job_power_watts": 480.0,
        "etj_job_power_limit_watts": 240.0,
    }
    assert _job_series(NAMESPACE, "billed") == expected
    # another operator process (restart, failover) reads the same status: the same values, not 0 + more
    fresh = metrics.JobStatusCollector()
    fresh.set(NAMESPACE, "billed", metrics.JobFigures.from_status(status))
    samples = {(s.name, s.labels.get("reason")): s.value for f in fresh.collect() for s in f.samples}
    assert samples[("etj_job_energy_joules_total", None)] == 7200.0
    assert samples[("etj_telemetry_rejected_samples_total", "counter_decrease")] == 2.0
    metrics.forget_job(NAMESPACE, "billed")


def test_what_nobody_measured_has_no_series_never_a_zero():
    # a job without readings yet: no joules, no power, no cap in the status
    _reconciler()._export(NAMESPACE, "fresh", Plan(status={"energy": EnergySection().to_status()}))
    assert _job_series(NAMESPACE, "fresh") == {}
    # measured, but the last cycle had no power reading, and no cap is asked
    measured = EnergySection(joules=100.0, last_sample_seconds=50.0).to_status()
    assert "currentWatts" not in measured
    _reconciler()._export(NAMESPACE, "fresh", Plan(status={"energy": measured, "control": {}}))
    assert _job_series(NAMESPACE, "fresh") == {"etj_job_energy_joules_total": 100.0, "etj_job_carbon_grams_total": 0.0}
    # no energy section at all
    _reconciler()._export(NAMESPACE, "fresh", Plan(status={"phase": "Pending"}))
    assert _job_series(NAMESPACE, "fresh") == {}
    metrics.forget_job(NAMESPACE, "fresh")


def test_a_measured_zero_is_exposed():
    status = {"energy": EnergySection(current_watts=0.0, last_sample_seconds=10.0).to_status()}
    _reconciler()._export(NAMESPACE, "idle", Plan(status=status))
    assert _job_series(NAMESPACE, "idle") == {
        "etj_job_energy_joules_total": 0.0,
        "etj_job_carbon_grams_total": 0.0,
        "etj_job_power_watts": 0.0,
    }
    metrics.forget_job(NAMESPACE, "idle")


def test_a_malformed_status_exposes_only_what_it_can_read():
    status = {"energy": {"joules": "lots", "currentWatts": float("nan"), "lastSampleTime": "x"}, "control": 5}
    _reconciler()._export(NAMESPACE, "garbled", Plan(status=status))
    assert _job_series(NAMESPACE, "garbled") == {}
    metrics.forget_job(NAMESPACE, "garbled")


# --- forgetting a job ---------------------------------------------------------------------------------------


def test_forgetting_a_job_removes_all_its_series_and_only_its_series():
    reconciler = _reconciler()
    _record(NAMESPACE, "gone")
    _record(NAMESPACE, "kept")
    _record("other-namespace", "gone")  # same name, another namespace: a different job
    gone = _job_series(NAMESPACE, "gone")
    every_family = {f.metric._name for f in metrics.PER_JOB_FAMILIES} | {
        metrics.ENERGY_JOULES.removesuffix("_total"),
        metrics.CARBON_GRAMS.removesuffix("_total"),
        metrics.REJECTED_SAMPLES.removesuffix("_total"),
        metrics.POWER_WATTS,
        metrics.POWER_LIMIT_WATTS,
        metrics.FORECAST_REMAINING_SECONDS,
        metrics.FORECAST_ENERGY_JOULES,
    }
    assert every_family <= {key.split("{")[0].removesuffix("_total").removesuffix("_created") for key in gone}
    kept_before = _job_series(NAMESPACE, "kept")
    other_before = _job_series("other-namespace", "gone")
    decisions = {key for key in gone if key.startswith("etj_policy_decisions_total{")}
    assert decisions == {"etj_policy_decisions_total{decision=a}", "etj_policy_decisions_total{decision=b}"}

    reconciler.forget(NAMESPACE, "gone")

    assert _job_series(NAMESPACE, "gone") == {}
    assert _job_series(NAMESPACE, "kept") == kept_before
    assert _job_series("other-namespace", "gone") == other_before
    reconciler.forget(NAMESPACE, "gone")  # forgetting twice (or an unknown job) is a no-op
    reconciler.forget(NAMESPACE, "never-seen")
    assert _job_series(NAMESPACE, "kept") == kept_before

    metrics.forget_job(NAMESPACE, "kept")
    metrics.forget_job("other-namespace", "gone")
    assert _job_series(NAMESPACE, "kept") == {} and _job_series("other-namespace", "gone") == {}


def declared_metric_names() -> set[str]:
    """Every metric family the operator's code declares, found in its source (wherever it is declared)."""
    declared = re.compile(r'(?:Counter|Gauge|Histogram|Summary)\(\s*"(etj_\w+)"|_per_job\(\s*\w+,\s*"(etj_\w+)"')
    names = set()
    for path in (ROOT / "operator" / "etj_operator").rglob("*.py"):
        for match in declared.finditer(path.read_text()):
            names.add(match.group(1) or match.group(2))
    names |= {metrics.ENERGY_JOULES, metrics.CARBON_GRAMS, metrics.REJECTED_SAMPLES}
    names |= {metrics.POWER_WATTS, metrics.POWER_LIMIT_WATTS}
    # every family read from the jobs' status (the collector's, whatever constant names them)
    names |= {f.name + ("_total" if f.type == "counter" else "") for f in metrics.JOB_STATUS.describe()}
    return names


def test_docs_list_every_operator_metric():
    text = (ROOT / "docs" / "telemetry.md").read_text()
    section = text.split("## Operator metrics", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(etj_\w+)` \| (\w+) \|", section, re.MULTILINE)}
    names = declared_metric_names()
    assert len(names) >= 15 and "etj_gang_restarts_total" in names and "etj_jobs" in names
    assert names - set(rows) == set(), "docs/telemetry.md, Operator metrics: add these"
    assert set(rows) - names == set(), "docs/telemetry.md, Operator metrics: nothing declares these"
    # the type column says what the registry says
    types = {f.name: f.type for f in metrics.REGISTRY.collect()}
    for name, kind in rows.items():
        family = name.removesuffix("_total") if kind == "counter" else name
        if family in types:
            assert types[family] == kind, name
