"""`make demo` end to end: the example job runs as real processes, is measured, throttled and compressed."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from etj_operator.sandbox.demo import demo
from etj_operator.sandbox.kubelet import tagged_processes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    out = io.StringIO()
    result = demo(console=Console(file=out, width=160), state_dir=base / "state", report_dir=base / "report")
    return result, out.getvalue()


def test_the_example_job_succeeds(run):
    result, text = run
    assert result.succeeded, text
    [job] = result.jobs
    assert job["metadata"]["name"] == "digits-ddp"
    assert job["status"]["phase"] == "Succeeded"
    assert job["status"]["workload"]["stopReason"] == "Quantized"


def test_energy_is_accounted_and_labelled_simulated(run):
    result, text = run
    energy = result.jobs[0]["status"]["energy"]
    assert energy["joules"] > 0
    assert "simulated" in energy["source"]
    assert result.jobs[0]["status"]["workload"]["gpuSource"] == "simulated"
    assert "SIMULATED" in text


def test_the_power_budget_throttled_the_job(run):
    result, _ = run
    job = result.jobs[0]
    budget = job["spec"]["energy"]["power"]["budgetWatts"]
    gpus = job["spec"]["replicas"] * job["spec"]["nprocPerNode"]
    # Asked (seen live by the demo), then in force as measured: the status said PowerCapEnforced, and the energy
    # history's limit column holds the limits the GPUs reported.
    assert result.caps["digits-ddp"] is not None
    assert result.caps["digits-ddp"] * gpus <= budget
    assert "digits-ddp" in result.enforced
    limits = [p[2] for p in job["status"]["energy"]["history"] if p[2] is not None]
    assert limits and min(limits) * gpus <= budget


def test_both_stages_are_recorded_with_sizes_and_accuracies(run):
    result, text = run
    stages = {s["name"]: s for s in result.jobs[0]["status"]["workload"]["stages"]}
    assert set(stages) == {"prune-50", "int8"}
    for stage in stages.values():
        assert stage["sizeBytesBefore"] > 0 and stage["sizeBytesAfter"] > 0
        assert 0 < stage["accuracyBefore"] <= 1 and 0 < stage["accuracyAfter"] <= 1
    assert stages["int8"]["applied"]
    assert stages["int8"]["sizeBytesAfter"] < stages["int8"]["sizeBytesBefore"]
    assert "stage prune-50:" in text and "stage int8:" in text


def test_report_files_are_written(run):
    result, text = run
    [(json_path, png_path)] = result.reports
    summary = json.loads(json_path.read_text())
    assert summary["simulated"] is True
    assert summary["energy"]["joules"] > 0
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(json_path) in text


def test_no_process_is_left_behind(run):
    result, _ = run
    assert tagged_processes(result.state_dir) == []


def test_the_node_agent_applied_the_throttle_to_the_jobs_node_gpus_and_reset_them(run):
    result, text = run
    [job] = result.jobs
    gpus = job["spec"]["replicas"] * job["spec"]["nprocPerNode"]
    # read from the agent's metrics while the pods held their GPUs, not from what the operator asked
    applied = result.agent_caps["digits-ddp"]
    assert len(applied) == gpus and all(uuid.startswith("GPU-") for uuid in applied)
    assert max(applied.values()) * gpus <= job["spec"]["energy"]["power"]["budgetWatts"]
    # Auto mode through the agent: the operator's clamped answer to the harness's request, applied by the agent
    assert "AutoCandidate" in result.agent_reasons["digits-ddp"]
    assert "Auto mode through the agent" in text and "no SYS_ADMIN in the pod" in text
    assert "cap applied by the node agent on sandbox:" in text and "simulated" in text
    # node GPUs are hardware: after the pods, every one is back at its default (the agent reset them)
    assert result.node_gpus_after and all(limit == default for limit, default in result.node_gpus_after.values())
    assert "simulated GPUs back at their default" in text


def test_the_report_and_the_output_carry_the_forecast_and_the_energy_breakdown(run):
    result, text = run
    [(json_path, _)] = result.reports
    summary = json.loads(json_path.read_text())
    split, forecast = summary["breakdown"], summary["forecast"]
    # measured energy, every joule in one of the three parts (unattributed where no timing covered it)
    assert split["known"] is True
    parts = split["computeJoules"] + split["communicationJoules"] + split["unattributedJoules"]
    assert parts == pytest.approx(summary["energy"]["joules"], abs=1e-3)
    assert split["network"]["modelled"] is True
    # the forecast: its figures, or unknown with the reason
    assert isinstance(forecast["known"], bool) and (forecast["known"] or forecast["reason"])
    assert "energy breakdown* (attributed by rank 0's communication time)" in text
    assert "network transfer energy" in text and "forecast:" in text
    # every stage names its non-zero parameters before and after (unknown shows as "-")
    assert text.count("non-zero params N1") == len(summary["stages"])
