"""The Hugging Face Trainer callback: the example (a tiny BERT from its config, no download) on 2 gloo ranks.

Each run is workloads/examples/hf_bert_ddp.py as two processes, as torchrun's workers, against a fake job API
over real HTTP (the harness's own client): what the test reads is what the operator would read in the job's
report.
"""

import copy
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from integration_support import (
    PRUNED_SHARE,
    assert_exit,
    job_env,
    patched,
    run_script,
    start_script,
    wait_until,
)

pytest.importorskip("transformers")  # the integrations extra (make install brings it)
from safetensors.torch import load_file  # with transformers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SCRIPT = "hf_bert_ddp.py"
#: 1024 sequences, 16 per rank and step, 2 ranks: 32 optimizer steps per epoch.
STEPS_PER_EPOCH = 32
AUTO = {"mode": "Auto", "auto": {"eta": 0.5, "warmupSteps": 1, "profileSteps": 2, "stepWatts": 100}}


def test_trainer_with_auto_power_prune_and_int8_reports_its_progress(fake_api: Any, tmp_path: Path) -> None:
    plan = {
        "stages": [
            {"name": "prune-30", "trigger": {"epoch": 3}, "prune": {"amount": PRUNED_SHARE}},
            {"name": "int8", "trigger": {"epoch": 4}, "quantize": {"dtype": "int8"}},
        ],
        "accuracyGuard": {"maxDrop": 0.05, "action": "Rollback"},
    }
    checkpoints = tmp_path / "ckpt"
    codes, outputs = run_script(SCRIPT, ["--epochs", "4"], job_env(fake_api, checkpoints, plan=plan, power=AUTO))
    assert_exit(codes, outputs)
    report = fake_api.workload()
    assert (report["step"], report["epoch"]) == (4 * STEPS_PER_EPOCH, 4)
    assert report["accuracy"] >= 0.95, report  # the tiny BERT learned the task
    assert report["loss"] > 0 and report["samplesPerSecond"] > 0 and report["gpuSource"] == "simulated"
    # Auto measured power limits on the Trainer's steps (the step signal: on_step_begin to on_step_end)
    candidates = report["powerProfile"]["candidates"]
    assert candidates and all(c["secondsPerStep"] > 0 for c in candidates), report["powerProfile"]
    # both stages ran where the plan put them; a kept int8 stage ends training
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["prune-30"]["applied"] and stages["prune-30"]["step"] == 3 * STEPS_PER_EPOCH
    assert stages["int8"]["applied"] and stages["int8"]["sizeBytesAfter"] < stages["int8"]["sizeBytesBefore"]
    assert report["stopReason"] == "Quantized"
    # the Trainer saved at the epoch ends the harness asked for, each with the harness's part beside it
    saved = sorted(checkpoints.glob("checkpoint-*/etj-harness.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    assert [p.parent.name for p in saved] == [f"checkpoint-{3 * STEPS_PER_EPOCH}", f"checkpoint-{4 * STEPS_PER_EPOCH}"]
    kept = [json.loads(p.read_text())["harness"]["compression"]["kept"] for p in saved]
    assert kept == [["prune-30"], ["prune-30", "int8"]]  # each saved after the stages its epoch end fired
    assert (checkpoints / "model-final.pt").is_file()  # the final (quantized) model, exported


def test_trainer_follows_the_control_resumes_and_checkpoints_on_sigterm(fake_api: Any, tmp_path: Path) -> None:
    plan = {
        "stages": [{"name": "prune-30", "trigger": {"energyFraction": 0.5}, "prune": {"amount": PRUNED_SHARE}}],
        "accuracyGuard": {"maxDrop": 1.0},
    }
    checkpoints = tmp_path / "ckpt"
    env = job_env(fake_api, checkpoints, plan=plan)
    fake_api.set_control(powerLimitWattsPerGPU=300, stageRequested="prune-30", checkpointRequested=1,
                         stopRequested=True)
    codes, outputs = run_script(SCRIPT, ["--epochs", "40"], env)
    assert_exit(codes, outputs)
    first = copy.deepcopy(fake_api.workload())
    assert first["stopReason"] == "StopRequested"
    assert 300.0 in patched(fake_api, "powerLimitWatts")  # the operator's cap, in force until the end
    assert [s["name"] for s in first["stages"] if s["applied"]] == ["prune-30"]  # the stage the operator asked
    checkpoint = first["checkpoint"]
    assert checkpoint["acknowledged"] == 1 and checkpoint["step"] == first["step"]
    assert Path(checkpoint["path"]).name == f"checkpoint-{first['step']}"
    assert (Path(checkpoint["path"]) / "etj-harness.json").is_file()

    # the pods come back (a resume, a restart): training goes on from that checkpoint, until a SIGTERM
    fake_api.set_control(stopRequested=False, stageRequested="")
    with fake_api.lock:  # the budget's cap is lifted: the policy's Fixed 500 W is the limit again
        del fake_api.obj["status"]["control"]["powerLimitWattsPerGPU"]
    before = len(fake_api.patches)
    ranks = start_script(SCRIPT, ["--epochs", "40"], env)
    wait_until(lambda: fake_api.workload()["step"] >= first["step"] + 10, ranks, "steps after the resume")
    for p in ranks.procs:  # what a pod's deletion does: every process of it gets SIGTERM
        p.send_signal(signal.SIGTERM)
    codes, outputs = ranks.wait()
    assert_exit(codes, outputs, expected=143)
    assert f"resuming from {checkpoint['path']} (step {first['step']})" in outputs[0]
    second = fake_api.workload()
    assert second["stopReason"] == "SIGTERM" and second["step"] > first["step"]
    limits = [body["status"]["powerLimitWatts"] for _, body in fake_api.patches[before:]
              if "powerLimitWatts" in body["status"]]
    assert 500.0 in limits and 300.0 not in limits
    assert [s["name"] for s in second["stages"]] == ["prune-30"]  # restored from the checkpoint, not applied again
    saved = Path(second["checkpoint"]["path"])
    assert second["checkpoint"]["step"] == second["step"] and saved.name == f"checkpoint-{second['step']}"
    assert second["checkpoint"]["acknowledged"] == 1  # the request was answered once, in the first run
    # the pruning survived the restart: the Trainer loaded the masks into the re-created structure, saved them again
    masks = load_file(saved / "model.safetensors")
    shares = {k: float((v == 0).float().mean()) for k, v in masks.items() if k.endswith("query.weight_mask")}
    assert shares and all(abs(share - PRUNED_SHARE) < 0.01 for share in shares.values()), shares
