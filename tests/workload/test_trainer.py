"""Real 2-rank DDP runs (gloo on CPU) of the ready trainer, as subprocesses on 127.0.0.1."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from workload_support import assert_ok, base_env, free_port

pytestmark = pytest.mark.slow

PLAN = {
    "stages": [
        {"name": "aggressive", "trigger": {"epoch": 5}, "prune": {"amount": 0.9, "method": "lnStructured"}},
        {"name": "prune50", "trigger": {"epoch": 6}, "prune": {"amount": 0.5, "method": "l1Unstructured"}},
        {"name": "int8", "trigger": {"epoch": 8}, "quantize": {"dtype": "int8"}},
    ],
    "accuracyGuard": {"maxDrop": 0.01, "action": "Rollback"},
}


@pytest.mark.timeout(300)
def test_mlp_two_ranks_reaches_95_percent(launch: Any) -> None:
    result = assert_ok(launch(["--model", "digits-mlp", "--epochs", "15"]))
    assert result["world_size"] == 2
    assert result["status"]["accuracy"] >= 0.95
    assert result["status"]["gpuSource"] == "simulated"


@pytest.mark.timeout(300)
def test_cnn_two_ranks_97_percent_then_prune_and_int8_compress(launch: Any) -> None:
    result = assert_ok(
        launch(
            ["--model", "digits-cnn", "--epochs", "8", "--lr", "3e-3"], env={"ETJ_COMPRESSION_PLAN": json.dumps(PLAN)}
        )
    )
    status = result["status"]
    stages = {s["name"]: s for s in status["stages"]}
    aggressive, prune50, int8 = stages["aggressive"], stages["prune50"], stages["int8"]
    assert aggressive["rolledBack"] and not aggressive["applied"]
    assert aggressive["accuracyBefore"] - aggressive["accuracyAfter"] > 0.01
    assert prune50["applied"] and int8["applied"]
    assert prune50["accuracyBefore"] >= 0.97  # the trained CNN, before compression
    assert prune50["paramsNonzero"] <= prune50["paramsTotal"] * 0.55
    size_ratio = prune50["sizeBytesBefore"] / int8["sizeBytesAfter"]
    drop_points = (prune50["accuracyBefore"] - status["accuracy"]) * 100
    assert size_ratio >= 3.0, size_ratio
    assert drop_points <= 1.0, drop_points
    assert status["accuracy"] >= 0.97 and status["stopReason"] == "Quantized"


@pytest.mark.timeout(300)
def test_resumed_training_matches_an_uninterrupted_run(launch: Any, tmp_path: Path) -> None:
    args = ["--model", "digits-cnn", "--epochs", "3"]  # the CNN has dropout: RNG state matters
    plan = {
        "stages": [{"name": "p", "trigger": {"step": 30}, "prune": {"amount": 0.3}}],
        "accuracyGuard": {"maxDrop": 0.5},
    }
    env = {"ETJ_COMPRESSION_PLAN": json.dumps(plan)}
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert_ok(launch(args, env={**env, "ETJ_CHECKPOINT_DIR": str(whole)}))
    first = assert_ok(launch([*args, "--stop-after-steps", "50"], env={**env, "ETJ_CHECKPOINT_DIR": str(parts)}))
    assert first["status"]["stopReason"] == "StepLimit" and first["status"]["checkpoint"]["step"] == 50
    second = assert_ok(launch(args, env={**env, "ETJ_CHECKPOINT_DIR": str(parts)}))
    assert [s["name"] for s in second["status"]["stages"]] == ["p"]  # restored, not applied again
    a = torch.load(whole / "model-final.pt", weights_only=True)
    b = torch.load(parts / "model-final.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


@pytest.mark.timeout(300)
def test_control_channel_under_torchrun(fake_api: Any, tmp_path: Path) -> None:
    """torchrun (2 local workers) reads status.control: cap, checkpoint request, stop; patches status.workload."""
    fake_api.set_control(powerLimitWattsPerGPU=350, checkpointRequested=4)
    env = base_env(
        {
            "KUBECONFIG": str(fake_api.kubeconfig),
            "ETJ_NAME": "job",
            "ETJ_NAMESPACE": "ns",
            "ETJ_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
            "ETJ_CONTROL_POLL_STEPS": "2",
            "ETJ_POWER_POLICY": json.dumps({"mode": "Fixed", "limitWatts": 500}),
            "ETJ_METRICS_PORT": str(free_port()),
        }
    )
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    cmd = [
        torchrun,
        "--nnodes=1",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "-m",
        "etj_workload",
        "train",
        "--model",
        "synthetic-mlp",
        "--width",
        "64",
        "--depth",
        "2",
        "--epochs",
        "1000",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = 120.0
        import time

        start = time.monotonic()
        while fake_api.workload().get("checkpoint", {}).get("acknowledged") != 4:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() - start < deadline, "checkpoint request never acknowledged"
            time.sleep(0.2)
        fake_api.set_control(stopRequested=True)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    workload = fake_api.workload()
    assert workload["stopReason"] == "StopRequested"
    assert workload["powerLimitWatts"] == 700.0  # restored at the end
    assert workload["gpuSource"] == "simulated" and workload["step"] > 0
    assert Path(workload["checkpoint"]["path"]).exists()
    assert all(ct == "application/merge-patch+json" for ct, _ in fake_api.patches)
    assert any(body["status"].get("powerLimitWatts") == 350.0 for _, body in fake_api.patches)
