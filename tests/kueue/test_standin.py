"""The stand-in for Kueue's admission (etj_operator.sandbox.kueue_standin; NOT Kueue) does what the integration tests
take it for: it admits by quota with one flavor in Kueue's order and words, preempts on demand, serves the Workload
CRD with Kueue's validations, and its no-pod-before-admission check does catch an operator that is not Kueue's
integration."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from etj_operator import contract as c
from etj_operator.runner import OperatorThread
from etj_operator.sandbox.emulator import ApiError, EmulatorServer
from etj_operator.sandbox.kueue_standin import (
    ANNOTATION_PREEMPT,
    QueueSetup,
    StandInKueue,
    has_quota,
    is_admitted,
    pod_requests,
    quantity,
)

from emulated import NS, Cluster, operator_kubeconfig, rbac_server, wait_until
from jobs import job_manifest

WORKLOADS = "workloads.kueue.x-k8s.io"


def workload(name: str, gpus: int = 1, count: int = 1, *, priority: int | None = None, min_count: int | None = None,
             queue: str = "team-a") -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": gpus}, "requests": {"cpu": "1"}}
    pod_set: dict[str, Any] = {"name": "worker", "count": count, "template": {"spec": {"containers": [
        {"name": "trainer", "image": "x", "resources": resources}]}}}
    if min_count is not None:
        pod_set["minCount"] = min_count
    spec: dict[str, Any] = {"queueName": queue, "podSets": [pod_set]}
    if priority is not None:
        spec["priority"] = priority
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload", "metadata": {"name": name}, "spec": spec}


def condition(wl: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((x for x in (wl.get("status") or {}).get("conditions") or [] if x["type"] == ctype), {})


@pytest.fixture
def standin():
    with EmulatorServer() as server:
        kueue = StandInKueue(server).install()
        kueue.add_queue(QueueSetup(quota={"nvidia.com/gpu": 2, "cpu": 4}))
        yield kueue


def get(standin: StandInKueue, name: str) -> dict[str, Any]:
    found = standin.server.get(WORKLOADS, NS, name)
    assert found is not None
    return found


def test_quantities_and_requests():
    assert quantity("500m") == Fraction(1, 2) and quantity("2Gi") == 2 * 2**30 and quantity(3) == 3
    with pytest.raises(ValueError):
        quantity("lots")
    template = {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": 1, "cpu": "2"},
                                                       "requests": {"cpu": "500m"}}}, {"name": "side"}]}}
    assert pod_requests(template) == {"nvidia.com/gpu": 1, "cpu": Fraction(1, 2)}  # a request wins over its limit


def test_admits_by_quota_in_priority_then_age_order_and_says_why_not_in_kueues_words(standin):
    for wl in (workload("old", gpus=2), workload("urgent", gpus=2, priority=10), workload("small", gpus=1)):
        standin.server.create(WORKLOADS, wl, namespace=NS)
    standin.step()
    urgent, old, small = get(standin, "urgent"), get(standin, "old"), get(standin, "small")
    assert is_admitted(urgent) and not has_quota(old) and not has_quota(small)
    assignment = urgent["status"]["admission"]["podSetAssignments"][0]
    assert urgent["status"]["admission"]["clusterQueue"] == "cluster-queue"
    assert assignment["flavors"] == {"cpu": "default-flavor", "nvidia.com/gpu": "default-flavor"}
    assert assignment["resourceUsage"] == {"cpu": "1", "nvidia.com/gpu": "2"} and assignment["count"] == 1
    pending = condition(old, "QuotaReserved")
    assert (pending["status"], pending["reason"]) == ("False", "Pending")
    assert pending["message"] == ("couldn't assign flavors to pod set worker: insufficient unused quota for"
                                  " nvidia.com/gpu in flavor default-flavor, 2 more needed")

    finished = get(standin, "urgent")
    conditions = finished["status"]["conditions"] + [{"type": "Finished", "status": "True", "reason": "Succeeded",
                                                      "message": "done", "lastTransitionTime": "2026-12-01T12:00:00Z"}]
    standin.server.patch_status(WORKLOADS, NS, "urgent", {"conditions": conditions})
    standin.step()
    assert is_admitted(get(standin, "old"))  # older first now that the quota is back
    assert not has_quota(get(standin, "small"))  # no room beside it


def test_partial_admission_down_to_min_count_and_an_unknown_queue(standin):
    standin.server.create(WORKLOADS, workload("elastic", gpus=1, count=3, min_count=1), namespace=NS)
    standin.server.create(WORKLOADS, workload("lost", queue="nowhere"), namespace=NS)
    standin.step()
    assert get(standin, "elastic")["status"]["admission"]["podSetAssignments"][0]["count"] == 2
    lost = condition(get(standin, "lost"), "QuotaReserved")
    assert (lost["reason"], lost["message"]) == ("Inadmissible", "LocalQueue nowhere doesn't exist")


def test_preempts_on_demand_and_by_annotation_keeping_the_admission_for_the_jobs_controller(standin):
    standin.server.create(WORKLOADS, workload("a"), namespace=NS)
    standin.server.create(WORKLOADS, workload("b"), namespace=NS)
    standin.step()
    standin.preempt(NS, "a")
    standin.server.patch(WORKLOADS, NS, "b", {"metadata": {"annotations": {ANNOTATION_PREEMPT: "now"}}})
    standin.step()
    for name in ("a", "b"):
        wl = get(standin, name)
        assert condition(wl, "Evicted")["reason"] == "Preempted" and condition(wl, "Preempted")["status"] == "True"
        assert has_quota(wl) and not is_admitted(wl)
        assert ANNOTATION_PREEMPT not in (wl["metadata"].get("annotations") or {})


def test_the_workload_crd_validates_as_kueues_does(standin):
    too_many = workload("x", count=1, min_count=2)
    with pytest.raises(ApiError, match="minCount should be positive and less or equal to count"):
        standin.server.create(WORKLOADS, too_many, namespace=NS)
    bad_priority = workload("y")
    bad_priority["spec"]["priorityClassRef"] = {"group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass",
                                                "name": "u"}
    with pytest.raises(ApiError, match="priority should not be nil"):
        standin.server.create(WORKLOADS, bad_priority, namespace=NS)
    standin.server.create(WORKLOADS, workload("z"), namespace=NS)
    with pytest.raises(ApiError):  # a condition without its required fields
        standin.server.patch_status(WORKLOADS, NS, "z", {"conditions": [{"type": "Finished", "status": "True"}]})


def test_the_rule_check_catches_an_operator_that_is_not_kueues_integration(tmp_path, monkeypatch):
    """The same job, the operator with ETJ_KUEUE off: it makes pods at once, and the check says so."""
    with rbac_server() as server:
        standin = StandInKueue(server, interval_seconds=0.05).install()
        standin.add_queue(QueueSetup(quota={"nvidia.com/gpu": 1}))
        monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig(server, tmp_path / "kubeconfig")))
        monkeypatch.setenv("ETJ_KUEUE", "false")
        monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
        monkeypatch.setenv("ETJ_METRICS_PORT", "0")
        with standin, OperatorThread(quiet=True):
            body = job_manifest("eager", replicas=1)
            body["metadata"]["labels"] = {c.LABEL_KUEUE_QUEUE: "team-a"}
            for key in ("uid", "generation"):
                body["metadata"].pop(key, None)
            Cluster(server).apply(body)
            wait_until(lambda: len(standin.violations) >= 2, what="both checks to see the eager pod")
    assert any("created while its Workload is not admitted (no Workload)" in v for v in standin.violations)
    assert any("exists while its Workload holds no admission" in v for v in standin.violations)
