"""The per-job report from a synthetic job dict: JSON summary, PNG plot, simulated labelling, bad input."""

import json

import pytest
import yaml

from etj_contract.sections import EnergyBreakdown, EnergySection, NetworkModel
from etj_operator.report import NO_FORECAST, build_summary, parse_history, run_report_command, write_report

T0 = 1_760_000_000.0  # unix seconds


def synthetic_job(*, simulated=True, points=60):
    history = []
    joules = 0.0
    for i in range(points):
        t = T0 + 10 * i
        paused = i >= 45
        limit = 300.0 if 20 <= i < 40 else None
        watts = 0.0 if paused else (1100.0 if limit else 1600.0)
        if i:
            joules += history[-1][1] * 10
        history.append([t, watts, limit, joules])
    return {
        "apiVersion": "efficienttraining.dev/v1alpha1",
        "kind": "EfficientTrainingJob",
        "metadata": {"name": "resnet", "namespace": "ml", "uid": "u-1"},
        "spec": {"replicas": 2, "nprocPerNode": 2, "energy": {"energyBudget": {"kilowattHours": 0.5}}},
        "status": {
            "phase": "Paused",
            "energy": {
                "joules": joules,
                "kilowattHours": joules / 3.6e6,
                "averageWatts": 1200.0,
                "peakWatts": 1650.0,
                "gramsCO2e": 21.5,
                "source": "Direct (simulated)" if simulated else "Prometheus",
                "simulated": simulated,
                "lastSampleTime": T0 + 10 * (points - 1),
                "history": history,
            },
            "workload": {
                "epoch": 3,
                "step": 900,
                "accuracy": 0.93,
                "stages": [
                    {
                        "name": "prune-30",
                        "applied": True,
                        "rolledBack": False,
                        "step": 300,
                        "epoch": 1,
                        "time": "2025-10-09T08:55:00Z",
                        "sizeBytesBefore": 1000,
                        "sizeBytesAfter": 700,
                        "accuracyBefore": 0.95,
                        "accuracyAfter": 0.94,
                    },
                    {
                        "name": "int8",
                        "applied": True,
                        "rolledBack": True,
                        "step": 600,
                        "epoch": 2,
                        "sizeBytesBefore": 700,
                        "sizeBytesAfter": 200,
                        "accuracyBefore": 0.94,
                        "accuracyAfter": 0.80,
                    },
                ],
            },
            "conditions": [
                {
                    "type": "Throttled",
                    "status": "False",
                    "reason": "BudgetOk",
                    "lastTransitionTime": T0 + 400,
                },  # 09:00:00Z
                {
                    "type": "Paused",
                    "status": "True",
                    "reason": "CarbonIntensityHigh",
                    "lastTransitionTime": "2025-10-09T09:00:50Z",  # T0 + 450
                },
                {"type": "Ready", "status": "True", "lastTransitionTime": "2025-10-09T08:00:00Z"},
            ],
        },
    }


def test_summary_carries_totals_history_stages_and_conditions():
    job = synthetic_job()
    summary = build_summary(job)
    energy = job["status"]["energy"]
    assert summary["job"] == {"name": "resnet", "namespace": "ml", "uid": "u-1"}
    assert summary["simulated"] is True and "simulated" in summary["dataLabel"]
    assert summary["gpus"] == 4
    assert summary["energy"]["joules"] == energy["joules"]
    assert summary["energy"]["budgetUsedFraction"] == pytest.approx(energy["kilowattHours"] / 0.5, rel=1e-5)
    assert summary["energy"]["lastSampleTime"].endswith("Z")
    history = summary["history"]
    assert history["points"] == 60 and history["durationSeconds"] == 590
    assert history["joulesInHistory"] == pytest.approx(energy["joules"])
    assert history["maxWatts"] == 1600.0 and history["perGpuLimitWatts"] == {"min": 300.0, "max": 300.0}
    # Time-weighted: each reading holds until the next, as the synthetic energy was integrated.
    assert history["meanWatts"] == pytest.approx(energy["joules"] / 590, abs=0.01)
    prune, int8 = summary["stages"]
    # sizeRatio is the contract's, before over after: 1000 B -> 700 B
    assert prune["sizeRatio"] == round(1000 / 700, 4) and prune["accuracyDrop"] == pytest.approx(0.01)
    assert prune["time"] == "2025-10-09T08:55:00Z"
    assert int8["rolledBack"] is True and int8["time"] is None
    assert [c["type"] for c in summary["conditions"]] == ["Throttled", "Paused"]
    assert summary["conditions"][1]["lastTransitionTime"] == "2025-10-09T09:00:50Z"
    assert summary["workload"] == {"epoch": 3, "step": 900, "accuracy": 0.93}


def test_write_report_makes_a_json_and_a_png(tmp_path):
    json_path, png_path = write_report(synthetic_job(), tmp_path / "out")
    assert json_path.name == "resnet-report.json" and png_path.name == "resnet-report.png"
    summary = json.loads(json_path.read_text())
    assert summary["plot"] == "resnet-report.png" and summary["simulated"] is True
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_measured_data_is_not_labelled_simulated(tmp_path):
    summary = build_summary(synthetic_job(simulated=False))
    assert summary["simulated"] is False and summary["dataLabel"] == "measured"
    assert summary["energy"]["source"] == "Prometheus"


def test_simulated_is_recognised_from_the_source_string_alone():
    job = synthetic_job()
    del job["status"]["energy"]["simulated"]
    assert build_summary(job)["simulated"] is True


def test_a_job_without_status_still_gets_a_report(tmp_path):
    job = {"kind": "EfficientTrainingJob", "metadata": {"name": "fresh", "namespace": "ml"}, "spec": {}}
    json_path, png_path = write_report(job, tmp_path)
    summary = json.loads(json_path.read_text())
    assert summary["history"] == {"points": 0}
    assert summary["energy"]["joules"] is None and summary["stages"] == []
    assert png_path.stat().st_size > 0


def test_a_job_whose_telemetry_never_answered_is_reported_as_no_data_not_zero(tmp_path, capsys):
    job = synthetic_job(simulated=False)
    # What the operator writes for a job that has run without a single reading: no totals, display "-".
    job["status"]["energy"] = EnergySection(source="Prometheus").to_status()
    assert "kilowattHours" not in job["status"]["energy"] and job["status"]["energy"]["display"] == {
        "power": "-",
        "energy": "-",
    }
    summary = build_summary(job)
    assert summary["dataLabel"] == "no data"
    assert summary["energy"]["kilowattHours"] is None and summary["energy"]["joules"] is None
    assert summary["energy"]["currentWatts"] is None and summary["energy"]["budgetUsedFraction"] is None
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job))
    assert run_report_command("resnet", out_dir=str(tmp_path / "r"), from_file=str(manifest)) == 0
    assert "energy unknown (no data)" in capsys.readouterr().out


def test_malformed_history_points_are_skipped_and_sorted():
    raw = [[20.0, 5.0, None, 2.0], "junk", [10.0, 4.0, 250, 1.0], [30.0, None, None, 3.0], [40.0, 1.0], None]
    points = parse_history(raw)
    assert [p.time_seconds for p in points] == [10.0, 20.0]
    assert points[0].per_gpu_limit_watts == 250.0


def test_the_command_reads_a_saved_manifest(tmp_path, capsys):
    manifest = tmp_path / "resnet.yaml"
    manifest.write_text(yaml.safe_dump(synthetic_job()))
    assert run_report_command("resnet", out_dir=str(tmp_path / "r"), from_file=str(manifest)) == 0
    out = capsys.readouterr().out
    assert "SIMULATED" in out and "resnet-report.png" in out
    # the breakdown and the forecast are printed too, each unknown with its reason when the status has none
    assert "energy breakdown" in out and "forecast: " in out
    assert (tmp_path / "r" / "resnet-report.json").exists()


def test_the_command_fails_cleanly_on_a_file_that_is_no_job(tmp_path, capsys):
    bad = tmp_path / "cm.yaml"
    bad.write_text("kind: ConfigMap\n")
    assert run_report_command("x", out_dir=str(tmp_path), from_file=str(bad)) == 1
    assert "does not hold" in capsys.readouterr().err


def forecast_status():
    """A status.forecast as the operator writes it (the CRD's keys), handwritten."""
    return {
        "stepsDone": 900,
        "stepsTotal": 1200,
        "stepsRemaining": 300,
        "stepsPerSecond": 2.0,
        "remainingSeconds": 150.0,
        "completionTime": "2025-10-09T09:12:30Z",
        "powerWatts": 1200.0,
        "energyToCompletionKilowattHours": 0.05,
        "energyAtCompletionKilowattHours": 0.32,
        "progressTime": "2025-10-09T09:10:00Z",
        "powerTime": "2025-10-09T09:09:50Z",
        "simulated": True,
        "reason": "Forecasting",
        "display": {"remaining": "2m30s", "energy": "0.32kWh"},
    }


def with_breakdown(job, *, network=True):
    split = EnergyBreakdown(
        compute_joules=400_000.0,
        communication_joules=100_000.0,
        unattributed_joules=job["status"]["energy"]["joules"] - 500_000.0,
        network_bytes=4 * 10**12 if network else None,
        network_joules_modelled=1565.0 if network else None,
        network_model=NetworkModel(5.5, 48.8, 0.5) if network else None,
    )
    job["status"]["energy"]["breakdown"] = split.to_status()
    return job


def test_the_forecast_is_reported_with_its_figures():
    job = synthetic_job()
    job["status"]["forecast"] = forecast_status()
    forecast = build_summary(job)["forecast"]
    assert forecast["known"] is True and forecast["reason"] == "Forecasting"
    assert forecast["stepsRemaining"] == 300 and forecast["remainingSeconds"] == 150.0
    assert forecast["energyAtCompletionKilowattHours"] == 0.32 and forecast["powerWatts"] == 1200.0
    assert forecast["completionTime"] == "2025-10-09T09:12:30Z" and forecast["simulated"] is True
    assert forecast["display"] == {"remaining": "2m30s", "energy": "0.32kWh"}


def test_an_absent_or_unknown_forecast_is_unknown_with_its_reason():
    job = synthetic_job()
    absent = build_summary(job)["forecast"]
    assert absent["known"] is False and absent["reason"] == NO_FORECAST
    job["status"]["forecast"] = {"reason": "NoPlan", "message": "the program does not say how many steps it plans",
                                 "stepsDone": 900, "simulated": False, "display": {"remaining": "-", "energy": "-"}}
    unknown = build_summary(job)["forecast"]
    assert unknown["known"] is False and unknown["reason"] == "NoPlan" and "steps" in unknown["message"]
    assert unknown["remainingSeconds"] is None and unknown["energyAtCompletionKilowattHours"] is None  # not 0
    job["status"]["forecast"] = {"remainingSeconds": "soon", "reason": "Forecasting"}  # malformed: skipped
    assert build_summary(job)["forecast"]["remainingSeconds"] is None


def test_the_breakdown_is_reported_measured_attributed_and_the_network_modelled():
    job = with_breakdown(synthetic_job())
    split = build_summary(job)["breakdown"]
    energy = job["status"]["energy"]["joules"]
    assert split["known"] is True
    assert split["computeJoules"] + split["communicationJoules"] + split["unattributedJoules"] == pytest.approx(energy)
    assert split["communicationFraction"] == pytest.approx(0.2)
    assert "upper bound" in split["note"] and split["basis"] == "attributed by rank 0's communication time"
    network = split["network"]
    assert network["modelled"] is True and "modelled" in network["label"]
    assert network["bytes"] == 4 * 10**12 and network["joulesModelled"] == 1565.0
    assert network["model"]["interNodeShare"] == 0.5


def test_without_a_breakdown_it_is_unknown_never_zero():
    job = synthetic_job()
    assert build_summary(job)["breakdown"] == {"known": False, "reason": "the job's status holds no energy breakdown"}
    job["status"]["energy"] = EnergySection(source="Prometheus").to_status()
    assert build_summary(job)["breakdown"]["known"] is False
    split = build_summary(with_breakdown(synthetic_job(), network=False))["breakdown"]
    assert split["network"]["joulesModelled"] is None and split["network"]["bytes"] is None


def test_each_stage_carries_n1_n2_and_the_ratios():
    job = synthetic_job()
    prune = job["status"]["workload"]["stages"][0]
    prune.update(paramsTotal=1000, paramsNonzeroBefore=1000, paramsNonzero=500)
    first, second = build_summary(job)["stages"]
    assert (first["paramsNonzeroBefore"], first["paramsNonzero"], first["paramRatio"]) == (1000, 500, 2.0)
    assert first["paramsTotal"] == 1000 and first["sizeBytesBefore"] == 1000 and first["sizeBytesAfter"] == 700
    assert second["paramsNonzeroBefore"] is None and second["paramRatio"] is None  # unknown, not 0
    assert second["sizeRatio"] == 3.5


def test_the_plot_draws_the_forecast_and_the_breakdown(tmp_path):
    job = with_breakdown(synthetic_job())
    job["status"]["forecast"] = forecast_status()
    json_path, png_path = write_report(job, tmp_path)
    summary = json.loads(json_path.read_text())
    assert summary["forecast"]["known"] and summary["breakdown"]["known"]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
