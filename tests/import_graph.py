"""The packages' import graph, read with ``ast`` (nothing is imported): shared by the import contract
(tests/unit/test_import_contract.py) and the images' install check (tests/chart/test_images.py)."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES: dict[str, Path] = {
    "etj_contract": ROOT / "contract" / "etj_contract",
    "etj_operator": ROOT / "operator" / "etj_operator",
    "etj_workload": ROOT / "workloads" / "etj_workload",
}


@dataclass(frozen=True)
class Import:
    """One import statement's target, as an absolute dotted name."""

    importer: str
    target: str
    line: int

    @property
    def top(self) -> str:
        return self.target.split(".")[0]

    def where(self) -> str:
        return f"{self.importer} imports {self.target} (line {self.line})"


def discover(packages: Mapping[str, Path]) -> dict[str, Path]:
    """Every module of the packages by dotted name (a package by its own name, for its ``__init__``)."""
    modules: dict[str, Path] = {}
    for package, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _literal_import(node: ast.Call) -> str | None:
    """The module of ``importlib.import_module("x")`` / ``import_module("x")`` / ``__import__("x")``."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("."):
        return first.value
    return None


def imports_of(module: str, path: Path, modules: Iterable[str]) -> list[Import]:
    """Every import in the module's source, resolved to absolute names (``from p import m`` -> ``p.m``)."""
    known = set(modules)
    is_package = path.name == "__init__.py"
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package_parts[: len(package_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if base == "__future__":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append(Import(module, candidate if candidate in known else base, node.lineno))
        elif isinstance(node, ast.Call) and (target := _literal_import(node)) is not None:
            found.append(Import(module, target, node.lineno))
    return found


class Graph:
    """The modules of the packages and their imports."""

    def __init__(self, packages: Mapping[str, Path]) -> None:
        self.modules = discover(packages)
        self.imports = {name: imports_of(name, path, self.modules) for name, path in self.modules.items()}

    def internal(self, imp: Import) -> list[str]:
        """The package modules an import runs: the target's module and every package above it."""
        parts = imp.target.split(".")
        return [m for i in range(1, len(parts) + 1) if (m := ".".join(parts[:i])) in self.modules]

    def closure(self, start: str) -> dict[str, list[str]]:
        """Every package module ``start`` runs on import, each with the chain of modules that leads to it."""
        chains: dict[str, list[str]] = {start: [start]}
        parts = start.split(".")
        for i in range(1, len(parts)):  # importing a submodule runs its packages first
            if (package := ".".join(parts[:i])) in self.modules:
                chains.setdefault(package, [start, package])
        todo = list(chains)
        while todo:
            current = todo.pop()
            for imp in self.imports[current]:
                for reached in self.internal(imp):
                    if reached not in chains:
                        chains[reached] = [*chains[current], reached]
                        todo.append(reached)
        return chains


def in_package(module: str, package: str) -> bool:
    """Whether ``module`` is ``package`` or one of its submodules."""
    return module == package or module.startswith(f"{package}.")


def third_party_imports(graph: Graph, modules: Iterable[str]) -> dict[str, list[str]]:
    """The third-party top-level modules these modules import (not stdlib, not etj_*), each with its importers."""
    found: dict[str, list[str]] = {}
    for module in sorted(modules):
        for imp in graph.imports[module]:
            if imp.top not in sys.stdlib_module_names and not imp.top.startswith("etj_"):
                found.setdefault(imp.top, []).append(module)
    return found
