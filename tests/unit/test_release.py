"""What a release ships agrees with itself: one version, the registry the chart points at, the license, the
changelog's format, the package data, and workflows that actionlint (with shellcheck) finds nothing in."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from etj_operator import __version__
from etj_operator.packagedata import REPOSITORY_FOLDERS, data_path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "efficient-training-operator"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
RELEASE = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
REGISTRY = RELEASE["env"]["REGISTRY"]


def test_one_version_for_the_package_the_chart_and_the_images():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "etj_operator.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == __version__ and chart["appVersion"] == __version__


def test_the_default_images_are_the_releases():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == f"{REGISTRY}/efficient-training-operator"
    assert values["image"]["tag"] == "" and values["image"]["digest"] == ""  # the tag defaults to appVersion
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert "(default .Chart.AppVersion .Values.image.tag)" in helpers
    docs = yaml.safe_load_all((ROOT / "workloads" / "examples" / "digits-ddp.yaml").read_text())
    example = next(d for d in docs if d["kind"] == "EfficientTrainingJob")
    (trainer,) = example["spec"]["template"]["spec"]["containers"]
    assert trainer["image"] == f"{REGISTRY}/etj-workload:{__version__}"
    readme = (ROOT / "README.md").read_text()  # the install section names this release's artifacts
    assert f"oci://{REGISTRY}/charts/efficient-training-operator --version {__version__}" in readme
    assert f"{REGISTRY}/etj-workload:{__version__}" in readme


def test_the_release_workflow_publishes_both_images_the_chart_and_the_python_distributions():
    assert RELEASE[True] == {"push": {"tags": ["v*"]}}  # PyYAML reads the key `on` as True
    jobs = RELEASE["jobs"]
    images = {(x["image"], x["target"]) for x in jobs["images"]["strategy"]["matrix"]["include"]}
    assert images == {("efficient-training-operator", "operator"), ("etj-workload", "workload")}
    dockerfile_targets = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    assert {target for _, target in images} <= dockerfile_targets
    build = next(s for s in jobs["images"]["steps"] if s.get("uses", "").startswith("docker/build-push-action@"))
    assert build["with"]["push"] is True
    assert build["with"]["tags"] == "${{ env.REGISTRY }}/${{ matrix.image }}:${{ needs.version.outputs.version }}"
    chart_steps = "\n".join(s.get("run", "") for s in jobs["chart"]["steps"])
    assert 'helm push "dist/efficient-training-operator-$VERSION.tgz" "oci://$REGISTRY/charts"' in chart_steps
    assert "python -m build" in "\n".join(s.get("run", "") for s in jobs["python"]["steps"])
    assert any(s.get("uses", "").startswith("pypa/gh-action-pypi-publish@") for s in jobs["pypi"]["steps"])
    assert jobs["pypi"]["permissions"] == {"id-token": "write"}
    # nothing is pushed before the version check, and PyPI only gets a release whose images and chart exist
    assert jobs["images"]["needs"] == "version" and set(jobs["pypi"]["needs"]) >= {"images", "chart", "python"}


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is not installed: `make install` (the dev extra) brings it"
    return found


def _actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("actionlint"), "-no-color", "-shellcheck", _tool("shellcheck"), *map(str, paths)],
                          capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


def test_actionlint_finds_nothing_in_the_workflows():
    assert {p.name for p in WORKFLOWS} >= {"e2e-kind.yml", "release.yml"}
    result = _actionlint(*WORKFLOWS)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_actionlint_and_shellcheck_would_report_a_broken_workflow(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text("on: push\njobs:\n  j:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo $UNQUOTED\n      - uses: actions/checkout@v5\n        with: {bogus: 1}\n")
    result = _actionlint(broken)
    assert result.returncode == 1
    assert "SC2086" in result.stdout and 'input "bogus" is not defined' in result.stdout


def test_the_license_is_the_apache_license_2_0_the_metadata_names():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    for needed in ("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", "1. Definitions.",
                   "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS",
                   "http://www.apache.org/licenses/LICENSE-2.0"):
        assert needed in text
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in (ROOT / "Dockerfile").read_text()


SECTIONS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_the_changelog_keeps_a_changelog():
    lines = (ROOT / "CHANGELOG.md").read_text().splitlines()
    assert lines[0] == "# Changelog"
    releases = [line for line in lines if line.startswith("## ")]
    assert releases[0] == "## [Unreleased]"
    for heading in releases[1:]:
        assert re.fullmatch(r"## \[\d+\.\d+\.\d+\] - \d{4}-\d{2}-\d{2}", heading), heading
    sections = [line.removeprefix("### ") for line in lines if line.startswith("### ")]
    assert sections and set(sections) <= SECTIONS


def test_setup_py_packages_what_packagedata_looks_up():
    tree = ast.parse((ROOT / "setup.py").read_text())
    packaged = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                    if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "PACKAGED")
    for target, (source, pattern) in packaged.items():
        folder, _, below = target.partition("/")
        assert source == "/".join(filter(None, [REPOSITORY_FOLDERS[folder], below])), target
        assert list((ROOT / source).glob(pattern)), f"{source}/{pattern} holds nothing"
        assert data_path(folder, below) == ROOT / source  # a source checkout reads the repository's
    assert set(packaged) == {"crds", "examples", "chart/templates"}
    manifest = (ROOT / "MANIFEST.in").read_text()
    for target, (source, pattern) in packaged.items():
        assert f"graft {source}" in manifest or f"include {source}/{pattern}" in manifest, target


@pytest.mark.parametrize("folder", sorted(REPOSITORY_FOLDERS))
def test_packagedata_names_a_folder_that_exists(folder):
    assert data_path(folder).is_dir()
