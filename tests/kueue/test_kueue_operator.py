"""The operator as Kueue's job integration (ETJ_KUEUE), end to end against the API emulator.

Kueue itself cannot run here: its Workload API is served from CRDs written from Kueue's API reference, and a stand-in
admission controller (etj_operator.sandbox.kueue_standin: admits by quota with one flavor, preempts on demand; NOT
Kueue) plays Kueue's scheduler. The real operator runs as the chart's ServiceAccount under the chart's rules with
``kueue.enabled``. At every step the stand-in checks that no pod of a queued job exists unless its Workload holds an
admission, and that none is created unless the Workload is admitted (``violations``); every wait below fails at
once on a violation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from etj_operator import contract as c
from etj_operator import kueue
from etj_operator.runner import OperatorThread
from etj_operator.sandbox.kueue_standin import QueueSetup, StandInKueue

from emulated import NS, Cluster, operator_kubeconfig, rbac_server, wait_until
from jobs import job_manifest

WORKLOADS = "workloads.kueue.x-k8s.io"
FLAVOR_LABELS = {"cloud.example.com/gpu-pool": "h100-spot"}
FLAVOR_TOLERATION = {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}


class KueueCluster(Cluster):
    """The emulator, the stand-in, and helpers that fail as soon as the no-pod-before-admission rule breaks."""

    def __init__(self, server: Any, standin: StandInKueue) -> None:
        super().__init__(server)
        self.standin = standin

    def wait(self, predicate: Callable[[], Any], what: str, timeout_seconds: float = 20.0) -> Any:
        def checked() -> Any:
            assert self.standin.violations == [], self.standin.violations
            return predicate()

        found = wait_until(checked, timeout_seconds, what)
        assert self.standin.violations == [], self.standin.violations
        return found

    def workload(self, job: str) -> dict[str, Any] | None:
        body = self.job(job)
        if body is None:
            return None
        return self.server.get(WORKLOADS, NS, kueue.workload_name(job, body["metadata"]["uid"]))

    def kueue_status(self, job: str) -> dict[str, Any]:
        return self.status(job).get("kueue") or {}

    def queued_condition(self, job: str) -> dict[str, Any]:
        return next((x for x in self.status(job).get("conditions") or [] if x["type"] == "Queued"), {})


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    return next((x for x in ((obj or {}).get("status") or {}).get("conditions") or [] if x["type"] == ctype), {})


def queued_job(name: str, *, gpus: int = 1, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body = job_manifest(name, **spec)
    for key in ("uid", "generation"):
        body["metadata"].pop(key, None)
    body["metadata"]["labels"] = {c.LABEL_KUEUE_QUEUE: "team-a", **(labels or {})}
    trainer = body["spec"]["template"]["spec"]["containers"][0]
    trainer["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    return body


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    with rbac_server() as server:
        standin = StandInKueue(server, interval_seconds=0.05).install()
        kubeconfig = operator_kubeconfig(server, tmp_path / "kubeconfig", kueue=True)  # the chart, kueue.enabled
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.setenv("ETJ_KUEUE", "true")
        monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
        monkeypatch.setenv("ETJ_METRICS_PORT", "0")
        with standin, OperatorThread(quiet=True):
            yield KueueCluster(server, standin)
        assert standin.violations == []
        assert standin.ticks > 0


def test_two_jobs_over_a_quota_of_one_run_one_after_the_other_where_the_flavor_says(cluster):
    cluster.standin.add_queue(QueueSetup(flavor="h100-spot", node_labels=FLAVOR_LABELS,
                                         tolerations=(FLAVOR_TOLERATION,), quota={"nvidia.com/gpu": 1}))
    first = cluster.apply(queued_job("first", replicas=1))
    pods = cluster.wait(lambda: len(cluster.live_pods("first")) == 1 and cluster.live_pods("first"), "first's pod")
    workload = cluster.workload("first")
    assert workload is not None
    # the Workload: owned by the job, one pod set of the template's requests, the queue
    owner = workload["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (c.KIND, first["metadata"]["uid"], True)
    [pod_set] = workload["spec"]["podSets"]
    assert pod_set["name"] == "worker" and pod_set["count"] == 1 and "minCount" not in pod_set
    assert pod_set["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert workload["spec"]["queueName"] == "team-a"
    # the pod: the flavor's node labels and toleration; no label that Kueue's pod integration would take
    [pod] = pods
    assert pod["spec"]["nodeSelector"] == FLAVOR_LABELS
    assert FLAVOR_TOLERATION in pod["spec"]["tolerations"]
    assert c.LABEL_KUEUE_QUEUE not in pod["metadata"]["labels"]
    status = cluster.wait(lambda: cluster.kueue_status("first").get("admitted") and cluster.kueue_status("first"),
                          "first admitted in status")
    assert status["clusterQueue"] == "cluster-queue" and status["flavors"] == {"nvidia.com/gpu": "h100-spot"}
    assert status["workloadName"] == workload["metadata"]["name"] and status["queueName"] == "team-a"
    assert cluster.queued_condition("first")["status"] == "False"

    cluster.apply(queued_job("second", replicas=1))
    status = cluster.wait_phase("second", "Queued")
    queued = cluster.wait(lambda: "insufficient unused quota" in cluster.queued_condition("second").get("message", "")
                          and cluster.queued_condition("second"), "second waits for quota, in Kueue's words")
    assert queued["status"] == "True" and queued["reason"] == "Pending"
    assert cluster.kueue_status("second")["admitted"] is False
    assert cluster.pods("second") == []

    cluster.set_phase("first", "Running")
    cluster.wait_phase("first", "Running")
    cluster.wait(lambda: condition(cluster.workload("first"), "PodsReady").get("status") == "True",
                 "PodsReady on first's Workload")
    assert cluster.pods("second") == []
    cluster.set_phase("first", "Succeeded")
    cluster.wait_phase("first", "Succeeded")
    finished = cluster.wait(lambda: condition(cluster.workload("first"), "Finished").get("status") == "True"
                            and condition(cluster.workload("first"), "Finished"), "first's Workload finished")
    assert finished["reason"] == "Succeeded"

    cluster.wait(lambda: len(cluster.live_pods("second")) == 1, "second starts once first finished")
    cluster.wait(lambda: cluster.kueue_status("second").get("admitted"), "second admitted")
    assert cluster.pod_creations("first") == 1

    # the Workload goes with its job (ownerReference)
    name = cluster.workload("second")["metadata"]["name"]
    cluster.server.delete(c.PLURAL, NS, "second")
    cluster.wait(lambda: cluster.server.get(WORKLOADS, NS, name) is None, "second's Workload garbage-collected")


def test_a_preempted_job_checkpoints_queues_again_with_kueues_reason_and_resumes(cluster):
    cluster.standin.add_queue(QueueSetup(quota={"nvidia.com/gpu": 1}))
    cluster.server.create("workloadpriorityclasses.kueue.x-k8s.io", {"metadata": {"name": "urgent"}, "value": 1000})
    cluster.apply(queued_job("low", replicas=1, checkpoint={"path": "/ckpt"}))
    cluster.wait(lambda: len(cluster.live_pods("low")) == 1, "low's pod")
    cluster.bind("low")  # on a node: a deleted pod stays until its kubelet says it stopped
    cluster.set_phase("low", "Running")
    cluster.wait_phase("low", "Running")

    cluster.apply(queued_job("high", replicas=1, labels={kueue.LABEL_PRIORITY_CLASS: "urgent"}))
    cluster.wait_phase("high", "Queued")
    high = cluster.workload("high")
    assert high["spec"]["priority"] == 1000
    assert high["spec"]["priorityClassRef"] == {"group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass",
                                                "name": "urgent"}

    cluster.standin.preempt(NS, cluster.workload("low")["metadata"]["name"])
    status = cluster.wait(lambda: cluster.kueue_status("low").get("draining") and cluster.status("low"),
                          "a checkpoint asked before low's pods stop")
    assert status["control"][c.CONTROL_CHECKPOINT_REQUESTED] == 1
    assert len(cluster.live_pods("low")) == 1  # nothing stops before the checkpoint
    assert cluster.pods("high") == []
    # the harness acknowledges in the job's report (the only object its pods may write)
    cluster.server.patch_status(c.REPORT_PLURAL, NS, "low",
                                {"checkpoint": {"acknowledged": 1, "step": 40, "path": "/ckpt/step-40"}})
    cluster.wait(lambda: cluster.terminating_pods("low"), "low's pod stopping")
    assert condition(cluster.workload("low"), "QuotaReserved").get("status") == "True"  # kept while it stops
    assert cluster.pods("high") == []
    cluster.finish_terminations("low")

    status = cluster.wait_phase("low", "Queued")
    queued = cluster.wait(lambda: cluster.queued_condition("low").get("reason") == "Preempted"
                          and cluster.queued_condition("low"), "low queued again, with Kueue's reason")
    assert "Preempted to accommodate a workload" in queued["message"]
    assert cluster.kueue_status("low")["requeues"] == 1
    low = cluster.wait(lambda: condition(cluster.workload("low"), "Requeued").get("status") == "True"
                       and cluster.workload("low"), "low's admission cleared")
    assert "admission" not in low["status"] or low["status"].get("admission") is None
    assert condition(low, "QuotaReserved")["status"] == "False"

    cluster.wait(lambda: len(cluster.live_pods("high")) == 1, "high runs in low's place")
    cluster.set_phase("high", "Succeeded")
    cluster.wait_phase("high", "Succeeded")

    pods = cluster.wait(lambda: len(cluster.live_pods("low")) == 1 and cluster.live_pods("low"),
                        "low admitted again and restarted")
    env = {v["name"]: v.get("value") for v in pods[0]["spec"]["containers"][0]["env"]}
    assert env[c.ENV_ETJ_CHECKPOINT_DIR] == "/ckpt"  # the harness resumes from its newest checkpoint there
    status = cluster.wait(lambda: cluster.kueue_status("low").get("admitted") and cluster.status("low"),
                          "low admitted in status")
    assert status["restarts"] == 0  # a preemption is no failure
    assert status["workload"]["checkpoint"]["step"] == 40
    assert cluster.pod_creations("low") == 2


def test_an_elastic_job_is_admitted_partially_and_a_spec_change_requeues_it(cluster):
    cluster.standin.add_queue(QueueSetup(quota={"nvidia.com/gpu": 2}))
    cluster.apply(queued_job("stretch", replicas=3, elastic={"minReplicas": 1, "maxReplicas": 3}))
    cluster.wait(lambda: len(cluster.live_pods("stretch")) == 2, "two of three pods admitted")
    workload = cluster.workload("stretch")
    assert workload["spec"]["podSets"][0]["minCount"] == 1
    assert workload["status"]["admission"]["podSetAssignments"][0]["count"] == 2
    assert cluster.wait(lambda: cluster.kueue_status("stretch").get("podCount"), "podCount") == 2
    first = workload["metadata"]["uid"]

    # a new pod set (replicas) outdates the Workload: the pods stop, it is replaced, the job queues again
    cluster.server.patch(c.PLURAL, NS, "stretch", {"spec": {"replicas": 2}})
    replaced = cluster.wait(lambda: (w := cluster.workload("stretch")) is not None and w["metadata"]["uid"] != first
                            and w, "a new Workload")
    assert replaced["spec"]["podSets"][0]["count"] == 2
    cluster.wait(lambda: len(cluster.live_pods("stretch")) == 2 and cluster.kueue_status("stretch").get("admitted"),
                 "running again under the new Workload")


def test_suspend_gives_the_place_back_and_a_job_without_a_queue_is_not_queued(cluster):
    cluster.standin.add_queue(QueueSetup(quota={"nvidia.com/gpu": 1}))
    body = job_manifest("free", replicas=1)
    for key in ("uid", "generation"):
        body["metadata"].pop(key, None)
    cluster.apply(body)  # no queue label: runs outside Kueue, as before
    cluster.wait(lambda: len(cluster.live_pods("free")) == 1, "the unqueued job's pod")
    assert cluster.workload("free") is None and "kueue" not in cluster.status("free")

    cluster.apply(queued_job("held", replicas=1))
    cluster.wait(lambda: len(cluster.live_pods("held")) == 1, "held's pod")
    name = cluster.workload("held")["metadata"]["name"]
    cluster.server.patch(c.PLURAL, NS, "held", {"spec": {"suspend": True}})
    cluster.wait_phase("held", "Suspended")
    cluster.wait(lambda: cluster.server.get(WORKLOADS, NS, name) is None, "held's Workload deleted")
    assert cluster.kueue_status("held")["reason"] == "Suspended"
    cluster.server.patch(c.PLURAL, NS, "held", {"spec": {"suspend": False}})
    cluster.wait(lambda: len(cluster.live_pods("held")) == 1 and cluster.workload("held"), "queued and admitted again")


def test_a_missing_priority_class_keeps_the_job_queued_and_says_which(cluster):
    cluster.standin.add_queue(QueueSetup(quota={"nvidia.com/gpu": 1}))
    template = job_manifest("x")["spec"]["template"]
    template["spec"]["priorityClassName"] = "gold"
    cluster.apply(queued_job("classy", replicas=1, template=template))
    queued = cluster.wait(lambda: cluster.queued_condition("classy").get("reason") == "PriorityClassNotFound"
                          and cluster.queued_condition("classy"), "the job names the missing class")
    assert "PriorityClass 'gold'" in queued["message"] and "spec.template.spec.priorityClassName" in queued["message"]
    assert cluster.workload("classy") is None and cluster.pods("classy") == []
    cluster.server.create("priorityclasses", {"metadata": {"name": "gold"}, "value": 500})
    workload = cluster.wait(lambda: cluster.workload("classy"), "the Workload once the class exists", 30)
    assert workload["spec"]["priority"] == 500
    assert workload["spec"]["priorityClassRef"]["kind"] == "PriorityClass"
    cluster.wait(lambda: len(cluster.live_pods("classy")) == 1, "admitted")
