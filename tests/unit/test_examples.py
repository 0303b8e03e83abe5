"""The example manifests: scripts shipped in ConfigMaps as they are, checkpoints on a claim the file defines."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "workloads" / "examples"
KIND = "EfficientTrainingJob"


def docs(name: str) -> list[dict]:
    return list(yaml.safe_load_all((EXAMPLES / name).read_text()))


@pytest.mark.parametrize(("manifest", "script"), [("hf-bert-ddp.yaml", "hf_bert_ddp.py"),
                                                  ("lightning-ddp.yaml", "lightning_ddp.py")])
def test_an_integration_example_ships_its_script_unchanged_and_runs_it_with_torchrun(manifest, script):
    found = docs(manifest)
    [config_map] = [d for d in found if d["kind"] == "ConfigMap"]
    [job] = [d for d in found if d["kind"] == KIND]
    assert config_map["data"] == {script: (EXAMPLES / script).read_text()}
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"][:2] == ["torchrun", script] and container["workingDir"] == "/workspace"
    [mount] = container["volumeMounts"]
    assert mount == {"name": "script", "mountPath": "/workspace", "readOnly": True}
    assert pod["volumes"] == [{"name": "script", "configMap": {"name": config_map["metadata"]["name"]}}]
    # the harness follows the operator: Auto power and a prune stage guarded by the accuracy
    assert job["spec"]["energy"]["power"]["mode"] == "Auto"
    assert any("prune" in stage for stage in job["spec"]["compression"]["stages"])


@pytest.mark.parametrize("manifest", ["digits-ddp.yaml", "hf-bert-ddp.yaml", "lightning-ddp.yaml"])
def test_checkpoints_live_on_a_claim_of_the_same_file_that_every_worker_can_mount(manifest):
    found = docs(manifest)
    [job] = [d for d in found if d["kind"] == KIND]
    claims = {d["metadata"]["name"]: d for d in found if d["kind"] == "PersistentVolumeClaim"}
    volume = job["spec"]["checkpoint"]["volume"]
    claim = claims[volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every worker reads the newest checkpoint
    assert claim["metadata"]["namespace"] == job["metadata"]["namespace"]
    kinds = [d["kind"] for d in found]
    assert kinds.index("PersistentVolumeClaim") < kinds.index(KIND)  # applied first: the pods find their claim
