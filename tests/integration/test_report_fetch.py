"""``etj report`` reads the job from an API server (the emulator) with a plain GET, then writes the report."""

import json

from etj_operator import contract as c
from etj_operator.report import fetch_job, run_report_command

from jobs import job_manifest

HISTORY = [[1_760_000_000.0 + 10 * i, 800.0, 350.0, 8000.0 * i] for i in range(5)]


def test_report_of_a_job_in_the_cluster(emulator, emulator_kubeconfig, tmp_path, capsys):
    emulator.create(c.PLURAL, job_manifest("bert"), namespace="default")
    energy = {"joules": 32000.0, "kilowattHours": 32000.0 / 3.6e6, "source": "Prometheus", "history": HISTORY}
    emulator.patch_status(c.PLURAL, "default", "bert", {"phase": "Running", "energy": energy})

    job = fetch_job("bert", "default", str(emulator_kubeconfig))
    assert job["metadata"]["name"] == "bert" and job["status"]["energy"]["joules"] == 32000.0

    code = run_report_command("bert", "default", str(tmp_path), str(emulator_kubeconfig))
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "bert-report.json").read_text())
    assert summary["phase"] == "Running" and summary["simulated"] is False
    assert summary["history"]["points"] == len(HISTORY)
    assert (tmp_path / "bert-report.png").stat().st_size > 0


def test_a_missing_job_is_a_clean_error(emulator, emulator_kubeconfig, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_report_command("nope", "default", str(out), str(emulator_kubeconfig)) == 1
    assert "not found" in capsys.readouterr().err
    assert not out.exists()
