"""The import contract, checked statically (ast; nothing is imported): which module may import what.

Rules (docs/architecture.md, "Import contract"):

1. The workload (``etj_workload``) imports no operator module: what both sides share lives in the contract
   package (``etj_contract``). Nor does it import the operator's own libraries (kopf, aiohttp,
   prometheus_api_client, rich): the workload image must not need them.
2. The operator (``etj_operator``, the sandbox and demo included) imports no torch, torchao, scikit-learn and
   no ``etj_workload`` module. The sandbox runs the harness as a process (``python -m etj_workload``), which
   is not an import.
3. The pure modules import no I/O library, directly or through a sibling: a pure module may import only
   other pure modules of the package (or the contract package, pure by rule 4).
4. The contract package (``etj_contract``) imports the standard library only: no ``etj_operator``, no
   ``etj_workload``, no third-party library; and, being pure, no I/O library of the standard library either.

Every import counts: module-level, function-local (lazy), under ``if TYPE_CHECKING:``, and
``importlib.import_module``/``__import__`` with a literal name.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from import_graph import PACKAGES, Graph
from import_graph import in_package as _in_package

#: The operator modules that decide without I/O, and the modules they need (also pure). The two package
#: ``__init__`` modules are listed because importing any submodule runs them.
PURE_MODULES = frozenset(
    {
        "etj_operator",
        "etj_operator.autolimit",
        "etj_operator.breakdown",
        "etj_operator.builders",
        "etj_operator.conditions",
        "etj_operator.contract",
        "etj_operator.energy",
        "etj_operator.forecast",
        "etj_operator.envvars",
        "etj_operator.jobpass",
        "etj_operator.kueue",
        "etj_operator.lifecycle",
        "etj_operator.models",
        "etj_operator.nodeagent",  # the package's __init__ (a docstring)
        "etj_operator.nodeagent.intent",
        "etj_operator.nodeagent.plan",
        "etj_operator.nodeagent.records",
        "etj_operator.policies",
        "etj_operator.status_repair",
        "etj_operator.telemetry",  # energy.py needs telemetry.base.GpuSample
        "etj_operator.telemetry.base",
    }
)
#: What a pure module must not import (top-level names). asyncio is in: the pure core runs no event loop and
#: awaits nothing, and asyncio is the door to sockets and subprocesses; time is in: the pure core is handed
#: ``now`` and reads no clock (``datetime`` types stay allowed).
FORBIDDEN_IN_PURE = frozenset(
    {
        "aiohttp",
        "asyncio",
        "http",
        "kopf",
        "kubernetes",
        "kubernetes_asyncio",
        "os",
        "pathlib",
        "prometheus_api_client",
        "prometheus_client",
        "pynvml",
        "requests",
        "select",
        "selectors",
        "shutil",
        "socket",
        "ssl",
        "subprocess",
        "threading",
        "time",
        "torch",
        "urllib",
        "urllib3",
    }
)
FORBIDDEN_IN_OPERATOR = frozenset({"torch", "torchao", "sklearn", "etj_workload"})
#: The operator's own libraries, which the workload image must not need.
FORBIDDEN_IN_WORKLOAD = frozenset({"kopf", "aiohttp", "prometheus_api_client", "rich"})
#: Operator modules the workload may import: none (what both share is in etj_contract).
WORKLOAD_MAY_IMPORT: frozenset[str] = frozenset()
CONTRACT = "etj_contract"

RULE_WORKLOAD = "rule 1: the workload imports no operator module and no operator library"
RULE_OPERATOR = "rule 2: the operator imports no torch, torchao, sklearn or etj_workload"
RULE_PURE = "rule 3: a pure module imports no I/O library and only pure siblings"
RULE_CONTRACT = "rule 4: the contract package imports the standard library only (and no I/O module of it)"


def workload_violations(graph: Graph) -> list[str]:
    found = []
    for module, imports in graph.imports.items():
        if not module.startswith("etj_workload"):
            continue
        for imp in imports:
            if imp.top == "etj_operator" and imp.target not in WORKLOAD_MAY_IMPORT:
                found.append(f"{imp.where()}: {RULE_WORKLOAD}")
        for reached, chain in graph.closure(module).items():
            via = f", run by {module} (via {' -> '.join(chain)})" if reached != module else ""
            if reached.startswith("etj_operator") and reached not in WORKLOAD_MAY_IMPORT and len(chain) > 2:
                # (a direct import is named above, with its line)
                found.append(f"{module} runs {reached} (via {' -> '.join(chain)}): {RULE_WORKLOAD}")
            for imp in graph.imports[reached]:
                if imp.top in FORBIDDEN_IN_WORKLOAD:
                    found.append(f"{imp.where()}{via}: {RULE_WORKLOAD}")
    return sorted(set(found))


def contract_violations(graph: Graph) -> list[str]:
    """Rule 4: every import of the contract package is its own or the standard library's (no I/O module)."""
    return sorted(
        f"{imp.where()}: {RULE_CONTRACT}"
        for module, imports in graph.imports.items()
        if _in_package(module, CONTRACT)
        for imp in imports
        if imp.top != CONTRACT and (imp.top not in sys.stdlib_module_names or imp.top in FORBIDDEN_IN_PURE)
    )


def operator_violations(graph: Graph) -> list[str]:
    return sorted(
        f"{imp.where()}: {RULE_OPERATOR}"
        for module, imports in graph.imports.items()
        if module.startswith("etj_operator")
        for imp in imports
        if imp.top in FORBIDDEN_IN_OPERATOR
    )


def pure_violations(graph: Graph, pure: Iterable[str]) -> list[str]:
    pure = frozenset(pure)
    found = []
    for module in sorted(pure):
        for reached, chain in graph.closure(module).items():
            via = f" (via {' -> '.join(chain)})" if len(chain) > 1 else ""
            if reached not in pure and not _in_package(reached, CONTRACT):  # the contract is pure (rule 4)
                found.append(f"pure {module} runs non-pure {reached}{via}: {RULE_PURE}")
            for imp in graph.imports[reached]:
                if imp.top in FORBIDDEN_IN_PURE:
                    found.append(f"pure {module}: {imp.where()}{via}: {RULE_PURE}")
    return sorted(set(found))


@pytest.fixture(scope="module")
def graph() -> Graph:
    return Graph(PACKAGES)


def _report(violations: list[str]) -> str:
    return "import contract broken:\n  " + "\n  ".join(violations)


def test_the_workload_imports_no_operator_module(graph: Graph) -> None:
    violations = workload_violations(graph)
    assert violations == [], _report(violations)


def test_the_contract_imports_the_standard_library_only(graph: Graph) -> None:
    assert len([m for m in graph.modules if _in_package(m, CONTRACT)]) >= 4  # the package and its modules
    violations = contract_violations(graph)
    assert violations == [], _report(violations)


def test_the_operator_imports_no_torch_and_no_workload_module(graph: Graph) -> None:
    violations = operator_violations(graph)
    assert violations == [], _report(violations)


def test_the_pure_modules_import_no_io_library_directly_or_through_a_sibling(graph: Graph) -> None:
    assert graph.modules.keys() >= PURE_MODULES, "a listed pure module does not exist"
    violations = pure_violations(graph, PURE_MODULES)
    assert violations == [], _report(violations)


def test_the_checker_sees_every_kind_of_import(graph: Graph) -> None:
    """The rules above pass because the code obeys them, not because the walk misses imports."""
    targets = {(i.importer, i.target) for imports in graph.imports.values() for i in imports}
    assert ("etj_operator.handlers", "kopf") in targets  # module level
    assert ("etj_workload.kubeclient", "yaml") in targets  # function-local (lazy)
    assert ("etj_operator.policies", "etj_operator.contract") in targets  # from package import module
    assert ("etj_workload.control", "etj_contract") in targets
    assert ("etj_operator.contract", "etj_contract.names") in targets
    assert ("etj_operator.lifecycle", "etj_operator.conditions") in targets
    workload_tops = {i.top for m, imports in graph.imports.items() if m.startswith("etj_workload") for i in imports}
    assert "torch" in workload_tops
    # energy.py reaches telemetry.base through the telemetry package, and the walk follows it there
    assert graph.closure("etj_operator.energy").keys() >= {"etj_operator.telemetry", "etj_operator.telemetry.base"}
    assert len([m for m in graph.modules if m.startswith("etj_workload")]) >= 10


def _write(root: Path, files: Mapping[str, str]) -> dict[str, Path]:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {
        "etj_contract": root / "ct" / "etj_contract",
        "etj_operator": root / "op" / "etj_operator",
        "etj_workload": root / "wl" / "etj_workload",
    }


def test_a_broken_rule_names_the_module_the_import_and_the_rule(tmp_path: Path) -> None:
    packages = _write(
        tmp_path,
        {
            "ct/etj_contract/__init__.py": "from etj_contract import names\n",
            "ct/etj_contract/names.py": "import enum\nfrom typing import Final\n",
            "op/etj_operator/__init__.py": "",
            "op/etj_operator/contract.py": "from etj_contract.names import *\n",
            # relative import of a non-pure sibling; the contract package is pure
            "op/etj_operator/pure.py": "from . import helper\nimport etj_contract\n",
            "op/etj_operator/helper.py": "def f():\n    import aiohttp\n",
            "op/etj_operator/sandbox/__init__.py": "",
            "op/etj_operator/sandbox/demo.py": "import importlib\nimportlib.import_module('etj_workload.trainer')\n",
            "wl/etj_workload/__init__.py": "",
            "wl/etj_workload/trainer.py": (
                "import etj_contract\nfrom etj_operator import contract\nfrom etj_operator.helper import f\n"
            ),
        },
    )
    graph = Graph(packages)
    assert pure_violations(graph, {"etj_operator", "etj_operator.pure"}) == [
        "pure etj_operator.pure runs non-pure etj_operator.helper (via etj_operator.pure -> etj_operator.helper): "
        + RULE_PURE,
        "pure etj_operator.pure: etj_operator.helper imports aiohttp (line 2) "
        "(via etj_operator.pure -> etj_operator.helper): " + RULE_PURE,
    ]
    assert operator_violations(graph) == [
        f"etj_operator.sandbox.demo imports etj_workload.trainer (line 2): {RULE_OPERATOR}"
    ]
    assert workload_violations(graph) == [
        "etj_operator.helper imports aiohttp (line 2), run by etj_workload.trainer "
        f"(via etj_workload.trainer -> etj_operator.helper): {RULE_WORKLOAD}",
        f"etj_workload.trainer imports etj_operator.contract (line 2): {RULE_WORKLOAD}",
        f"etj_workload.trainer imports etj_operator.helper (line 3): {RULE_WORKLOAD}",
    ]
    assert contract_violations(graph) == []
    # one step further: a workload module that reaches an operator module through a workload sibling
    (packages["etj_workload"] / "harness.py").write_text("from etj_workload import trainer\n")
    assert (
        "etj_workload.harness runs etj_operator.helper "
        "(via etj_workload.harness -> etj_workload.trainer -> etj_operator.helper): " + RULE_WORKLOAD
    ) in workload_violations(Graph(packages))
    # the contract: an operator module, a third-party library and an I/O module of the standard library
    (packages["etj_contract"] / "bad.py").write_text(
        "import enum\nimport os\nfrom etj_operator import contract\nimport yaml\nfrom etj_contract import names\n"
    )
    assert contract_violations(Graph(packages)) == [
        f"etj_contract.bad imports etj_operator.contract (line 3): {RULE_CONTRACT}",
        f"etj_contract.bad imports os (line 2): {RULE_CONTRACT}",
        f"etj_contract.bad imports yaml (line 4): {RULE_CONTRACT}",
    ]
