"""The Lightning callback: the example (an MLP LightningModule on scikit-learn's digits) on 2 gloo ranks.

Each run is workloads/examples/lightning_ddp.py as two processes, as torchrun's workers (Lightning joins their
world), against a fake job API over real HTTP (the harness's own client).
"""

import copy
import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from integration_support import (
    PRUNED_SHARE,
    assert_exit,
    job_env,
    patched,
    run_script,
    start_script,
    wait_until,
    zero_share,
)

pytest.importorskip("pytorch_lightning")  # the integrations extra (make install brings it)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SCRIPT = "lightning_ddp.py"
#: 1437 training digits, 32 per rank and step, 2 ranks: 23 optimizer steps per epoch (the last one short).
STEPS_PER_EPOCH = 23
AUTO = {"mode": "Auto", "auto": {"eta": 0.5, "warmupSteps": 1, "profileSteps": 2, "stepWatts": 100}}


def test_lightning_with_auto_power_and_a_prune_stage_reports_its_progress(fake_api: Any, tmp_path: Path) -> None:
    plan = {
        "stages": [{"name": "prune-30", "trigger": {"epoch": 4}, "prune": {"amount": PRUNED_SHARE}}],
        "accuracyGuard": {"maxDrop": 0.02, "action": "Rollback"},
    }
    checkpoints = tmp_path / "ckpt"
    codes, outputs = run_script(SCRIPT, ["--epochs", "6"], job_env(fake_api, checkpoints, plan=plan, power=AUTO))
    assert_exit(codes, outputs)
    report = fake_api.workload()
    assert (report["step"], report["epoch"]) == (6 * STEPS_PER_EPOCH, 6)
    assert report["accuracy"] >= 0.9, report
    assert report["loss"] > 0 and report["samplesPerSecond"] > 0 and report["gpuSource"] == "simulated"
    candidates = report["powerProfile"]["candidates"]  # Auto measured limits on Lightning's optimizer steps
    assert candidates and all(c["secondsPerStep"] > 0 for c in candidates), report["powerProfile"]
    [stage] = report["stages"]
    assert stage["name"] == "prune-30" and stage["applied"] and stage["step"] == 4 * STEPS_PER_EPOCH
    assert stage["accuracyBefore"] - stage["accuracyAfter"] <= 0.02
    assert "stopReason" not in report
    # Lightning's own checkpoints, the two newest kept, each with the harness's part; the final model exported
    saved = sorted(p.name for p in checkpoints.iterdir())
    assert saved == [f"etj-{s:010d}.{ext}" for s in (5 * STEPS_PER_EPOCH, 6 * STEPS_PER_EPOCH)
                     for ext in ("ckpt", "json")] + ["model-final.pt"]
    assert json.loads((checkpoints / saved[-2]).read_text())["harness"]["compression"]["kept"] == ["prune-30"]
    shares = zero_share(checkpoints / "model-final.pt", "weight")
    assert shares and all(abs(share - PRUNED_SHARE) < 0.01 for share in shares.values()), shares


def test_lightning_checkpoints_on_sigterm_resumes_and_stops_on_request(fake_api: Any, tmp_path: Path) -> None:
    plan = {
        "stages": [{"name": "prune-30", "trigger": {"energyFraction": 0.5}, "prune": {"amount": PRUNED_SHARE}}],
        "accuracyGuard": {"maxDrop": 1.0},
    }
    checkpoints = tmp_path / "ckpt"
    env = job_env(fake_api, checkpoints, plan=plan)
    fake_api.set_control(powerLimitWattsPerGPU=300, stageRequested="prune-30", checkpointRequested=1)
    ranks = start_script(SCRIPT, ["--epochs", "40"], env)
    wait_until(lambda: fake_api.workload().get("checkpoint", {}).get("acknowledged") == 1, ranks,
               "acknowledged checkpoint request")
    for p in ranks.procs:  # what a pod's deletion does: every process of it gets SIGTERM
        p.send_signal(signal.SIGTERM)
    codes, outputs = ranks.wait()
    assert_exit(codes, outputs, expected=143)
    first = copy.deepcopy(fake_api.workload())
    assert first["stopReason"] == "SIGTERM" and first["step"] < 40 * STEPS_PER_EPOCH
    assert 300.0 in patched(fake_api, "powerLimitWatts")
    assert [s["name"] for s in first["stages"] if s["applied"]] == ["prune-30"]
    checkpoint = first["checkpoint"]
    assert checkpoint["step"] == first["step"] and checkpoint["acknowledged"] == 1  # saved at the SIGTERM
    assert Path(checkpoint["path"]).name == f"etj-{first['step']:010d}.ckpt" and Path(checkpoint["path"]).is_file()

    # the pods come back: training goes on from that checkpoint until the operator asks it to stop
    fake_api.set_control(stageRequested="", stopRequested=True)
    with fake_api.lock:  # the budget's cap is lifted: the policy's Fixed 500 W is the limit again
        del fake_api.obj["status"]["control"]["powerLimitWattsPerGPU"]
    before = len(fake_api.patches)
    codes, outputs = run_script(SCRIPT, ["--epochs", "40"], env)
    assert_exit(codes, outputs)
    limits = [body["status"]["powerLimitWatts"] for _, body in fake_api.patches[before:]
              if "powerLimitWatts" in body["status"]]
    assert 500.0 in limits and 300.0 not in limits
    assert f"resuming from {checkpoint['path']} (step {first['step']})" in outputs[0]
    second = fake_api.workload()
    assert second["stopReason"] == "StopRequested" and second["step"] > first["step"]
    assert [s["name"] for s in second["stages"]] == ["prune-30"]  # restored from the checkpoint, not applied again
    saved = Path(second["checkpoint"]["path"])
    assert saved.name == f"etj-{second['step']:010d}.ckpt"
    # Lightning's checkpoint holds plain data (weights_only loads it) and the masks of the re-created pruning
    state = torch.load(saved, weights_only=True)["state_dict"]
    shares = {k: float((v == 0).float().mean()) for k, v in state.items() if k.endswith("weight_mask")}
    assert len(shares) == 3 and all(abs(share - PRUNED_SHARE) < 0.01 for share in shares.values()), shares
