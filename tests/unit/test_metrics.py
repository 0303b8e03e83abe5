"""The operator's metrics: every per-job series goes when its job is forgotten, in every per-job family."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from etj_operator import metrics
from etj_operator.config import OperatorConfig
from etj_operator.ports import JobWriter
from etj_operator.reconciler import JobReconciler

NAMESPACE = "metrics-test"


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
    ) -> bool:
        raise AssertionError("no API call expected")


def _registered_metrics() -> list[MetricWrapperBase]:
    # The registry keeps its collectors in a private map; reading it finds every family registered on it,
    # wherever it was declared (not only in metrics.py).
    return [c for c in metrics.REGISTRY._collector_to_names if isinstance(c, MetricWrapperBase)]


def _job_series(namespace: str, job: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """(sample name, labels) of every exposed sample of ``namespace/job``, read from the text exposition."""
    text = generate_latest(metrics.REGISTRY).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("namespace") == namespace and sample.labels.get("job") == job
    }


def _exposed_families(namespace: str, job: str) -> set[str]:
    text = generate_latest(metrics.REGISTRY).decode()
    return {
        family.name
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("namespace") == namespace and sample.labels.get("job") == job
    }


def _record(namespace: str, job: str) -> None:
    """One series per per-job family for the job, two in families with an extra label."""
    for family in metrics.PER_JOB_FAMILIES:
        extra = family.labelnames[len(metrics.JOB_LABELS) :]
        choices: list[tuple[str, ...]] = [()] if not extra else [("a",) * len(extra), ("b",) * len(extra)]
        for values in choices:
            child: Any = family.metric.labels(namespace, job, *values)
            child.inc()


def test_every_family_labelled_by_job_is_declared_per_job() -> None:
    per_job = {id(f.metric): f for f in metrics.PER_JOB_FAMILIES}
    registered = _registered_metrics()
    assert registered, "no metric found on the operator's registry"
    for metric in registered:
        labelnames = tuple(metric._labelnames)
        name = metric._name
        if "job" in labelnames or "namespace" in labelnames:
            assert id(metric) in per_job, (
                f"{name} is labelled {labelnames} but not declared with metrics._per_job: "
                "forget_job would leave its series of deleted jobs"
            )
            assert per_job[id(metric)].labelnames == labelnames, name
            assert labelnames[: len(metrics.JOB_LABELS)] == metrics.JOB_LABELS, name
    # Every listed family is registered (none declared on another registry, none listed twice).
    assert {id(m) for m in registered} >= set(per_job)
    assert len(per_job) == len(metrics.PER_JOB_FAMILIES)
    # The two families that kept deleted jobs' series before are per-job now.
    assert id(metrics.GANG_RESTARTS) in per_job and id(metrics.POLICY_DECISIONS) in per_job


def test_forgetting_a_job_removes_all_its_series_and_only_its_series() -> None:
    reconciler = JobReconciler(NoApi(), OperatorConfig(), lambda body, event: None)
    _record(NAMESPACE, "gone")
    _record(NAMESPACE, "kept")
    _record("other-namespace", "gone")  # same name, another namespace: a different job
    every_family = {f.metric._name for f in metrics.PER_JOB_FAMILIES}
    assert every_family <= _exposed_families(NAMESPACE, "gone")  # (the text parser adds *_created families)
    kept_before = _job_series(NAMESPACE, "kept")
    other_before = _job_series("other-namespace", "gone")
    decisions = {
        dict(labels)["decision"]
        for sample_name, labels in _job_series(NAMESPACE, "gone")
        if sample_name == "etj_policy_decisions_total"
    }
    assert decisions == {"a", "b"}

    reconciler.forget(NAMESPACE, "gone")

    assert _job_series(NAMESPACE, "gone") == set()
    assert _job_series(NAMESPACE, "kept") == kept_before
    assert _job_series("other-namespace", "gone") == other_before
    reconciler.forget(NAMESPACE, "gone")  # forgetting twice (or an unknown job) is a no-op
    reconciler.forget(NAMESPACE, "never-seen")
    assert _job_series(NAMESPACE, "kept") == kept_before

    metrics.forget_job(NAMESPACE, "kept")
    metrics.forget_job("other-namespace", "gone")
    assert _job_series(NAMESPACE, "kept") == set() and _job_series("other-namespace", "gone") == set()
