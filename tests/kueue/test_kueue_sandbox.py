"""``etj sandbox up --kueue`` with real pods: a queued job runs where admitted, is preempted, checkpoints through the
real harness, queues again and resumes from its checkpoint (the trainer's log says so). The admission is the
sandbox's stand-in for Kueue (etj_operator.sandbox.kueue_standin; NOT Kueue)."""

from __future__ import annotations

import copy

import pytest
import yaml

from etj_operator import contract as c
from etj_operator import kueue
from etj_operator.packagedata import data_path
from etj_operator.sandbox.kubelet import iter_pod_logs
from etj_operator.sandbox.kueue_standin import ANNOTATION_PREEMPT
from etj_operator.sandbox.sandbox import KUEUE_FLAVOR, KUEUE_QUEUE, Sandbox, SandboxOptions

from emulated import NS, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def resumable_job(name: str) -> dict:
    """The example job, queued, with its checkpoint on a claim (an emptyDir would go with the pod)."""
    docs = yaml.safe_load_all(data_path("examples", "digits-ddp.yaml").read_text())
    job = copy.deepcopy(next(d for d in docs if d and d.get("kind") == c.KIND))
    job["metadata"] = {"name": name, "namespace": NS, "labels": {c.LABEL_KUEUE_QUEUE: KUEUE_QUEUE}}
    spec = job["spec"]
    spec["replicas"] = 1
    spec["checkpoint"] = {"path": "/checkpoints", "volume": {"persistentVolumeClaim": {"claimName": f"{name}-ckpt"}}}
    spec.pop("compression", None)
    spec["energy"] = {"telemetry": {"source": "Direct", "intervalSeconds": 1}}
    trainer = spec["template"]["spec"]["containers"][0]
    trainer["command"] = ["torchrun", "-m", "etj_workload", "train", "--model", "digits-mlp", "--epochs", "60"]
    return job


def test_a_preempted_sandbox_job_resumes_from_its_checkpoint(tmp_path):
    options = SandboxOptions(state_dir=tmp_path / "state", port=0, kueue=True, gpus_per_node=1, prometheus=False,
                             node_agent=False, max_grace_seconds=20.0)
    with Sandbox(options) as sandbox:
        server = sandbox.api
        claim = {"metadata": {"name": "resumer-ckpt"},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
        server.create("persistentvolumeclaims", claim, namespace=NS)  # outlives the pods, as on a cluster
        server.create(c.PLURAL, resumable_job("resumer"), namespace=NS)

        def running_pod() -> dict | None:
            pods = [p for p in server.list("pods", NS, label_selector=f"{c.LABEL_JOB_NAME}=resumer")
                    if not p["metadata"].get("deletionTimestamp") and (p.get("status") or {}).get("phase") == "Running"]
            return pods[0] if pods else None

        first = wait_until(running_pod, 90, "the admitted job's pod running")
        assert first["spec"]["nodeSelector"] == {"kubernetes.io/hostname": sandbox.kubelet.config.node_name}
        job = server.get(c.PLURAL, NS, "resumer")
        status = wait_until(lambda: (s := (server.get(c.PLURAL, NS, "resumer") or {}).get("status") or {})
                            .get("kueue", {}).get("admitted") and s, 30, "admitted in status")
        assert status["kueue"]["flavors"] == {"nvidia.com/gpu": KUEUE_FLAVOR}
        wait_until(lambda: ((server.get(c.PLURAL, NS, "resumer") or {}).get("status") or {}).get("workload", {})
                   .get("step"), 90, "training under way (the report's step)")

        name = kueue.workload_name("resumer", job["metadata"]["uid"])
        server.patch("workloads.kueue.x-k8s.io", NS, name, {"metadata": {"annotations": {ANNOTATION_PREEMPT: "now"}}})
        acked = wait_until(lambda: ((server.get(c.PLURAL, NS, "resumer") or {}).get("status") or {})
                           .get("workload", {}).get("checkpoint", {}).get("acknowledged"), 90,
                           "the harness acknowledges the checkpoint asked before the pods stop")
        assert acked == 1

        def second_pod() -> dict | None:
            pod = running_pod()
            return pod if pod is not None and pod["metadata"]["uid"] != first["metadata"]["uid"] else None

        second = wait_until(second_pod, 120, "the job admitted again, in a new pod")
        status = (server.get(c.PLURAL, NS, "resumer") or {})["status"]
        assert status["kueue"]["requeues"] == 1 and status["restarts"] == 0

        def resumed() -> str | None:
            for log in iter_pod_logs(sandbox.state_dir, second["metadata"]["name"], NS):
                if second["metadata"]["uid"] in str(log):
                    text = log.read_text(errors="replace")
                    return text if "resumed from" in text else None
            return None

        log_text = wait_until(resumed, 90, "the new pod's trainer resuming from the checkpoint")
        line = next(x for x in log_text.splitlines() if "resumed from" in x)
        assert "pvc-resumer-ckpt" in line  # the claim's directory, which outlived the first pod
        assert int(line.rsplit("step ", 1)[1]) > 0
        assert sandbox.kueue is not None and sandbox.kueue.violations == []
