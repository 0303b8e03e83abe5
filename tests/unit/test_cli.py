import sys
from pathlib import Path

import pytest
import yaml

from etj_operator import __version__
from etj_operator.cli import main

from jobs import job_manifest

ROOT = Path(__file__).resolve().parents[2]


def test_validate_accepts_the_examples(capsys):
    examples = sorted(str(p) for p in (ROOT / "workloads" / "examples").glob("*.yaml"))
    assert examples
    assert main(["validate", *examples]) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_reports_each_problem_with_its_field(tmp_path, capsys):
    bad = job_manifest("bad", replicas=0, energy={"power": {"mode": "Fixed"}})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "  spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1" in out
    assert "  spec.energy.power.limitWatts: Required value: mode Fixed needs limitWatts" in out


def test_validate_needs_a_job(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    assert main(["validate", str(path)]) == 1


def test_version_is_the_package_version(capsys, monkeypatch):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"etj {__version__}\n"
    monkeypatch.setitem(sys.modules, "kopf", None)  # a core install: still answers
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"etj {__version__}\n"


@pytest.mark.parametrize(("argv", "extras"), [
    (["validate", "job.yaml"], "validate"),
    (["demo"], "sandbox,workload"),
    (["sandbox", "up"], "sandbox"),
    (["operator"], "operator"),
])
def test_a_core_install_names_the_extra_of_the_command(argv, extras, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "kopf", None)
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"etj: the operator's libraries are not installed (kopf): pip install 'efficient-training-operator[{extras}]'"]


def test_demo_and_sandbox_name_their_missing_extras_in_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert main(["demo"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "etj demo: needs the workload extra (torch not installed): "
        "pip install 'efficient-training-operator[sandbox,workload]'"]
    monkeypatch.setitem(sys.modules, "kmock", None)
    assert main(["sandbox", "up"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "etj sandbox: needs the sandbox extra (kmock not installed): "
        "pip install 'efficient-training-operator[sandbox]'"]
