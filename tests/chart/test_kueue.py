"""Kueue fit (docs/kueue.md), through the real operator against the API emulator: a job created suspended makes no
pods; admission (suspend false plus the node selector and tolerations Kueue injects into the template) makes pods
that carry them and the queue-name label; suspending again deletes the pods, as Kueue's preemption expects."""

from __future__ import annotations

import pytest

from etj_operator import contract as c
from etj_operator.runner import OperatorThread

from emulated import NS, Cluster, operator_kubeconfig, rbac_server, wait_until
from jobs import job_manifest

FLAVOR_SELECTOR = {"cloud.example.com/gpu-pool": "h100-spot"}
FLAVOR_TOLERATION = {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    with rbac_server() as server:  # the operator as the chart's ServiceAccount, under the chart's rules
        monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig(server, tmp_path / "kubeconfig")))
        monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
        monkeypatch.setenv("ETJ_METRICS_PORT", "0")
        with OperatorThread(quiet=True):
            yield Cluster(server)


def test_a_queued_job_waits_suspended_and_runs_where_kueue_admits_it(cluster):
    body = job_manifest("queued", replicas=2, suspend=True)
    body["metadata"]["labels"] = {c.LABEL_KUEUE_QUEUE: "team-a"}
    cluster.apply(body)
    cluster.wait_phase("queued", "Suspended")
    assert cluster.pods("queued") == []

    # admission, as Kueue's job reconciler does it: the flavor's node selector and tolerations, then unsuspend
    template = cluster.job("queued")["spec"]["template"]
    template["spec"]["nodeSelector"] = FLAVOR_SELECTOR
    template["spec"]["tolerations"] = [FLAVOR_TOLERATION]
    cluster.server.patch(c.PLURAL, NS, "queued", {"spec": {"suspend": False, "template": template}})
    pods = cluster.wait_pods("queued", 2)
    for pod in pods:
        assert pod["spec"]["nodeSelector"] == FLAVOR_SELECTOR
        # the flavor's toleration first; then the API server's default not-ready/unreachable ones
        assert pod["spec"]["tolerations"][0] == FLAVOR_TOLERATION
        assert pod["metadata"]["labels"][c.LABEL_KUEUE_QUEUE] == "team-a"

    # preemption: Kueue suspends the job again; every pod goes, and the job reports Suspended
    cluster.server.patch(c.PLURAL, NS, "queued", {"spec": {"suspend": True}})
    cluster.wait_phase("queued", "Suspended")
    wait_until(lambda: not cluster.live_pods("queued"), what="pods deleted on suspend")
    assert cluster.job("queued")["spec"]["template"]["spec"]["nodeSelector"] == FLAVOR_SELECTOR  # spec untouched
