"""The installed wheel works on its own: built as the release builds it, installed without the network into
fresh virtual environments, run from a directory outside the repository.

* ``full``: the wheel, with the libraries of this test's environment visible through a ``.pth`` file (every
  entry of its site-packages except this project's editable install): ``etj validate``, ``etj operator --help``,
  ``kubectl-etj report --help``, and the sandbox's CRDs, example job and chart RBAC from the package data.
* ``core``: the wheel alone (its core has no dependencies): ``etj --version`` answers, and each command says in
  one line which extra to install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

from etj_operator import __version__

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

#: This project's editable install in the test environment: left out of what the fresh environment sees.
OWN_ENTRIES = ("__editable__", "efficient_training_operator")


@dataclass(frozen=True)
class Env:
    root: Path
    cwd: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def run(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return subprocess.run([str(self.bin / argv[0]), *argv[1:]], input=stdin, capture_output=True, text=True,
                              cwd=self.cwd, env=env, timeout=120, check=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The sdist, then the wheel built from it (``python -m build``, as the release workflow), offline."""
    dist = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = dist.glob("*.whl")
    assert built.name == f"efficient_training_operator-{__version__}-py3-none-any.whl"
    return built


def _install(wheel: Path, root: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install", "--no-deps", "--no-index",
         "--no-cache-dir", "--disable-pip-version-check", "--quiet", str(wheel)],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _site_packages(root: Path) -> Path:
    (found,) = root.glob("lib/python*/site-packages")
    return found


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("elsewhere")
    assert not cwd.resolve().is_relative_to(ROOT)
    return cwd


@pytest.fixture(scope="module")
def full(wheel, outside, tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("full") / "venv"
    _install(wheel, root)
    # the test environment's libraries, without this project's editable install (its finder, .pth, metadata)
    libraries = root.parent / "libraries"
    libraries.mkdir()
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        if not entry.name.startswith(OWN_ENTRIES) and entry.suffix != ".pth":
            (libraries / entry.name).symlink_to(entry)
    (_site_packages(root) / "test-libraries.pth").write_text(f"{libraries}\n")
    return Env(root, outside)


@pytest.fixture(scope="module")
def core(wheel, outside, tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("core") / "venv"
    _install(wheel, root)
    return Env(root, outside)


def test_the_package_is_the_wheels_and_its_data_is_packaged(full):
    code = ("import json, etj_operator, etj_operator.packagedata as p, importlib.metadata as m;"
            "name = 'efficient-training-operator';"
            "print(json.dumps([etj_operator.__file__, str(p.data_path('crds')), m.version(name),"
            " [str(f) for f in m.files(name) if f.name == 'LICENSE']]))")
    result = full.run("python", "-c", code)
    assert result.returncode == 0, result.stderr
    module, crds, version, licenses = json.loads(result.stdout)
    assert Path(module).is_relative_to(full.root) and not Path(module).is_relative_to(ROOT)
    assert Path(crds) == _site_packages(full.root) / "etj_operator" / "_data" / "crds"
    assert sorted(p.name for p in Path(crds).iterdir()) == sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert version == __version__ and licenses


def test_etj_version(full, core):
    for env in (full, core):
        result = env.run("etj", "--version")
        assert (result.returncode, result.stdout, result.stderr) == (0, f"etj {__version__}\n", "")


def test_etj_validate_from_the_wheel(full):
    job = (ROOT / "workloads" / "examples" / "digits-ddp.yaml").read_text()
    (full.cwd / "job.yaml").write_text(job)
    result = full.run("etj", "validate", "job.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ("job.yaml:13: PersistentVolumeClaim digits-ddp-checkpoints: skipped (not a kind of"
                             " efficienttraining.dev)\njob.yaml:24: EfficientTrainingJob default/digits-ddp: valid\n")
    typo = job.replace("  replicas: 2", "  replicass: 2")
    assert typo != job
    result = full.run("etj", "validate", "-o", "json", "-", stdin=typo)
    assert result.returncode == 1, result.stdout + result.stderr
    claim, document = json.loads(result.stdout)["documents"]
    assert (claim["kind"], claim["verdict"]) == ("PersistentVolumeClaim", "skipped")
    assert [(p["stage"], p["field"]) for p in document["problems"]] == [("decoding", "spec.replicass")]


@pytest.mark.parametrize("argv", [("etj", "operator", "--help"), ("kubectl-etj", "report", "--help"),
                                  ("etj", "demo", "--help"), ("etj", "sandbox", "up", "--help")])
def test_the_commands_answer_from_the_wheel(full, argv):
    result = full.run(*argv)
    assert result.returncode == 0 and result.stdout.startswith("usage: etj "), result.stdout + result.stderr


def test_the_sandbox_finds_its_crds_example_and_rbac_in_the_package(full):
    code = """
import json
from etj_operator.sandbox.demo import DEFAULT_EXAMPLES
from etj_operator.sandbox.emulator import EmulatorServer
from etj_operator.sandbox.identities import chart_rbac_objects, install_operator_identity
from etj_operator.sandbox.sandbox import crd_path
import yaml
with EmulatorServer(crds=[crd_path()], rbac=True) as server:
    install_operator_identity(server, chart_rbac_objects())
    job = next(d for d in yaml.safe_load_all(DEFAULT_EXAMPLES.read_text()) if d["kind"] == "EfficientTrainingJob")
    created = server.create("efficienttrainingjobs", job, "default")
print(json.dumps([str(crd_path()), str(DEFAULT_EXAMPLES), created["metadata"]["name"]]))
"""
    result = full.run("python", "-c", code)
    assert result.returncode == 0, result.stderr[-3000:]
    crds, example, name = json.loads(result.stdout)
    data = _site_packages(full.root) / "etj_operator" / "_data"
    assert (Path(crds), Path(example), name) == (data / "crds", data / "examples" / "digits-ddp.yaml", "digits-ddp")


@pytest.mark.parametrize(("argv", "extras"), [(("etj", "validate", "job.yaml"), "validate"),
                                              (("etj", "demo"), "sandbox,workload"),
                                              (("etj", "operator", "--help"), "operator"),
                                              (("kubectl-etj", "report", "x"), "operator")])
def test_a_core_install_says_which_extra_to_install(core, argv, extras):
    result = core.run(*argv)
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("etj: the operator's libraries are not installed (")
    assert line.endswith(f": pip install 'efficient-training-operator[{extras}]'")
