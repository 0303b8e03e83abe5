from pathlib import Path

import yaml

from etj_operator.cli import main

from jobs import job_manifest

ROOT = Path(__file__).resolve().parents[2]


def test_validate_accepts_the_examples(capsys):
    examples = sorted(str(p) for p in (ROOT / "workloads" / "examples").glob("*.yaml"))
    assert examples
    assert main(["validate", *examples]) == 0
    assert "ok" in capsys.readouterr().out


def test_validate_reports_each_problem_with_its_field(tmp_path, capsys):
    bad = job_manifest("bad", replicas=0, energy={"power": {"mode": "Fixed"}})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "spec.replicas" in out and "spec.energy.power.limitWatts" in out and "fix:" in out


def test_validate_needs_a_job(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("kind: ConfigMap\n")
    assert main(["validate", str(path)]) == 1
