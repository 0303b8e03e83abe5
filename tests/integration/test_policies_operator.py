"""Energy policies that need no telemetry, through the real operator against the emulator."""

from __future__ import annotations

import pytest

from etj_operator import contract as c
from etj_operator.runner import OperatorThread

from emulated import NS, Cluster, operator_kubeconfig, rbac_server, wait_until
from jobs import job_manifest


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    with rbac_server() as server:  # the operator as the chart's ServiceAccount, under the chart's rules
        monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig(server, tmp_path / "kubeconfig")))
        monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
        monkeypatch.setenv("ETJ_METRICS_PORT", "0")
        monkeypatch.setenv("ETJ_PROMETHEUS_URL", "http://127.0.0.1:9")  # nothing listens: telemetry fails
        with OperatorThread():
            yield Cluster(server)


def test_power_pressure_moves_the_gang_after_a_checkpoint(cluster):
    cluster.server.create("nodes", {"metadata": {"name": "gpu-a"}})
    template = job_manifest("movable")["spec"]["template"]
    template["spec"]["nodeName"] = "gpu-a"  # stands in for the scheduler's choice
    cluster.apply(job_manifest("movable", replicas=2, template=template, checkpoint={"path": "/ckpt"}))
    cluster.wait_pods("movable", 2)
    cluster.set_phase("movable", "Running")
    cluster.wait_phase("movable", "Running")

    cluster.server.patch(
        "nodes", None, "gpu-a", {"metadata": {"annotations": {"efficienttraining.dev/power-pressure": "true"}}}
    )
    status = wait_until(
        lambda: (s := cluster.status("movable")).get("control", {}).get(c.CONTROL_CHECKPOINT_REQUESTED) and s,
        15,
        "a checkpoint request",
    )
    assert len(cluster.live_pods("movable")) == 2  # nothing moves before the checkpoint
    # the harness's acknowledgement goes to the job's report (its pods may write nothing else)
    cluster.server.patch_status(c.REPORT_PLURAL, NS, "movable", {"checkpoint": {"acknowledged": 1}})
    status = wait_until(
        lambda: (s := cluster.status("movable")).get("placement", {}).get("reschedules") == 1 and s, 15, "reschedule"
    )
    assert status["placement"]["avoidedNodes"] == ["gpu-a"]
    assert status["restarts"] == 0  # a move is not a failure

    def moved():
        cluster.finish_terminations("movable")  # the node's kubelet removes the moved pods once they stopped
        pods = cluster.live_pods("movable")
        return (
            len(pods) == 2
            and all("gpu-a" in str(p["spec"].get("affinity", {}).get("nodeAffinity", {})) for p in pods)
            and pods
        )

    pods = wait_until(moved, 15, "the gang recreated with the node excluded")
    terms = pods[0]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["gpu-a"]} in terms["nodeSelectorTerms"][0][
        "matchExpressions"
    ]
    assert any(e["reason"] == "Rescheduling" for e in cluster.server.list("events", NS))


def test_carbon_pause_deletes_pods_and_resumes_when_the_grid_is_clean(cluster):
    carbon = {"intensityGramsPerKWh": 500, "maxGramsPerKWh": 300, "minDwellSeconds": 0}
    cluster.apply(job_manifest("green", replicas=2, energy={"carbon": carbon}))
    status = cluster.wait_phase("green", "Paused")
    assert any(x["type"] == "Paused" and x["status"] == "True" for x in status["conditions"])
    wait_until(lambda: not cluster.live_pods("green"), 10, "pods deleted while paused")
    cluster.server.patch(c.PLURAL, NS, "green", {"spec": {"energy": {"carbon": {"intensityGramsPerKWh": 100}}}})
    cluster.wait_pods("green", 2)
    status = cluster.wait_phase("green", "Pending")
    assert any(x["type"] == "Paused" and x["status"] == "False" for x in status["conditions"])


def test_the_forecast_follows_the_jobs_report(cluster):
    cluster.apply(job_manifest("eta", replicas=1))
    cluster.wait_pods("eta", 1)
    cluster.set_phase("eta", "Running")
    cluster.wait_phase("eta", "Running")
    cluster.server.patch_status(c.REPORT_PLURAL, NS, "eta", {"step": 10, "stepsTotal": 100})
    status = wait_until(
        lambda: (s := cluster.status("eta")).get(c.FORECAST, {}).get("stepsRemaining") == 90 and s, 15, "a forecast"
    )
    # one step observation and no power (telemetry fails here): no speed yet, and it says why
    assert status[c.FORECAST]["reason"] == "NotEnoughProgress"
    assert status[c.FORECAST]["display"] == {"remaining": "-", "energy": "-"}
