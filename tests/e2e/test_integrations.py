"""Bring your own training, end to end: the framework examples in the sandbox.

workloads/examples/hf-bert-ddp.yaml as it is runs to its end, its stages applied and its progress in the job's
status. workloads/examples/lightning-ddp.yaml as it is (its script in a ConfigMap, its checkpoints on a
PersistentVolumeClaim), with more epochs so that the suspension lands mid-training: two pods run torchrun with
the script, the harness inside Lightning reports to the job, and a suspension (the pods get SIGTERM) leaves a
Lightning checkpoint on the claim from which the recreated pods go on. Nothing waits on wall time: every wait
is for a condition, with a timeout.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from etj_contract import Phase
from etj_operator import contract as c
from etj_operator.sandbox.kubelet import tagged_processes
from etj_operator.sandbox.sandbox import REPO_ROOT, Sandbox, SandboxOptions

from emulated import wait_until

pytest.importorskip("pytorch_lightning")  # the integrations extra (make install brings it)
pytest.importorskip("transformers")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NS = "default"
JOB = "lightning-ddp"
EXAMPLE = REPO_ROOT / "workloads" / "examples" / "lightning-ddp.yaml"
HF_EXAMPLE = REPO_ROOT / "workloads" / "examples" / "hf-bert-ddp.yaml"
EPOCHS = 30
STEPS_PER_EPOCH = 23  # 1437 digits, 32 per rank and step, 2 ranks


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Iterator[Sandbox]:
    state = tmp_path_factory.mktemp("byo") / "state"
    with Sandbox(SandboxOptions(state_dir=state, port=0, max_grace_seconds=20, prometheus=False)) as sb:
        yield sb
    assert tagged_processes(state) == []


def workload(sandbox: Sandbox, name: str = JOB) -> dict[str, Any]:
    job = sandbox.api.get(c.PLURAL, NS, name) or {}
    return dict((job.get("status") or {}).get("workload") or {})


def phase(sandbox: Sandbox, name: str = JOB) -> str | None:
    job = sandbox.api.get(c.PLURAL, NS, name) or {}
    return (job.get("status") or {}).get("phase")


def test_the_hugging_face_example_runs_its_stages_and_reports_its_progress(sandbox: Sandbox):
    created = sandbox.apply_file(HF_EXAMPLE)  # as `kubectl create -f`: the ConfigMap, the claim, the job
    [name] = [o["metadata"]["name"] for o in created if o["kind"] == c.KIND]
    wait_until(lambda: phase(sandbox, name) in (Phase.SUCCEEDED, Phase.FAILED), 240, f"{name} finished")
    assert phase(sandbox, name) == Phase.SUCCEEDED
    done = workload(sandbox, name)
    stages = {s["name"]: s for s in done["stages"]}
    assert stages["prune-30"]["applied"] and stages["int8"]["applied"] and done["stopReason"] == "Quantized"
    assert done["epoch"] == 6 and done["step"] > 0 and done["accuracy"] >= 0.9 and "powerProfile" in done
    assert done["checkpoint"]["path"].split("/")[-1] == f"checkpoint-{done['step']}"  # the Trainer's, on the claim
    energy = (sandbox.api.get(c.PLURAL, NS, name) or {})["status"]["energy"]  # the harness's /metrics in its pods
    assert energy["joules"] > 0 and energy["source"].startswith("Direct")


def test_the_lightning_example_reports_and_resumes_from_its_claim_after_a_suspension(sandbox: Sandbox):
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    job = next(d for d in docs if d["kind"] == c.KIND)
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["torchrun", "lightning_ddp.py"]
    container["command"] = [*container["command"][:2], "--epochs", str(EPOCHS)]
    claim = job["spec"]["checkpoint"]["volume"]["persistentVolumeClaim"]["claimName"]
    assert {d["kind"] for d in docs} == {"ConfigMap", "PersistentVolumeClaim", c.KIND}
    for doc in docs:
        sandbox.api.create(doc["kind"], doc, namespace=NS)

    # running under the harness: an epoch-end checkpoint on the claim and the prune stage reported
    wait_until(lambda: any(s.get("applied") for s in workload(sandbox).get("stages") or []), 180,
               "the prune stage applied")
    sandbox.api.patch(c.PLURAL, NS, JOB, {"spec": {"suspend": True}})
    wait_until(lambda: phase(sandbox) == Phase.SUSPENDED and not sandbox.api.list(
        "pods", namespace=NS, label_selector=f"{c.LABEL_JOB_NAME}={JOB}"), 120, "Suspended, the pods gone")
    stopped = workload(sandbox)
    assert stopped["stopReason"] == "SIGTERM", stopped
    checkpoint = stopped["checkpoint"]
    assert checkpoint["step"] == stopped["step"] < EPOCHS * STEPS_PER_EPOCH  # saved at the SIGTERM, mid-training
    assert f"/pvc-{claim}-" in checkpoint["path"] and checkpoint["path"].endswith(f"etj-{stopped['step']:010d}.ckpt")

    sandbox.api.patch(c.PLURAL, NS, JOB, {"spec": {"suspend": False}})
    wait_until(lambda: phase(sandbox) == Phase.SUCCEEDED, 240, "Succeeded after the resume")
    done = workload(sandbox)
    assert (done["step"], done["epoch"]) == (EPOCHS * STEPS_PER_EPOCH, EPOCHS)
    assert [s["name"] for s in done["stages"]] == ["prune-30"]  # restored from the checkpoint, not applied again
    assert done["accuracy"] >= 0.9 and done["gpuSource"] == "simulated"
    # the harness's metrics endpoint in the Lightning pods measured the job (telemetry.source: Direct)
    energy = (sandbox.api.get(c.PLURAL, NS, JOB) or {})["status"]["energy"]
    assert energy["joules"] > 0 and energy["source"].startswith("Direct") and "simulated" in energy["source"]
    kubelet = sandbox.kubelet
    assert kubelet is not None
    logs = kubelet.read_log(NS, f"{JOB}-worker-0")
    assert f"resuming from {checkpoint['path']} (step {stopped['step']})" in logs
