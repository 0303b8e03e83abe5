"""Rendering the Helm chart with the real Helm engine (helm-python-sdk) for the chart tests (not a test module)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "efficient-training-operator"
RELEASE = "etj"
NAMESPACE = "etj-system"
#: Where each release pushes its images (.github/workflows/release.yml, env REGISTRY): the chart's default.
RELEASE_REGISTRY: str = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())["env"]["REGISTRY"]


def _profiles() -> dict[str, dict[str, Any]]:
    profiles: dict[str, dict[str, Any]] = {"default": {}}
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        profiles[path.name.removesuffix("-values.yaml")] = yaml.safe_load(path.read_text()) or {}
    return profiles


#: The documented values profiles (docs/deploy.md): the chart's defaults plus every ci/<name>-values.yaml.
PROFILES: dict[str, dict[str, Any]] = _profiles()


def chart_min_kube_version() -> str:
    """The lowest Kubernetes version the chart supports (Chart.yaml kubeVersion, ">=X.Y.Z-0")."""
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)(-0)?", constraint)
    assert match, f"Chart.yaml kubeVersion {constraint!r} is not of the form >=X.Y.Z-0"
    return match.group(1)


#: Kubernetes versions the rendered manifests are validated against: the newest schemas kubernetes-validate
#: ships, and the oldest version the chart declares.
KUBE_VERSIONS: tuple[str, ...] = (kubernetes_validate.latest_version(), chart_min_kube_version())


@functools.cache
def _render_cached(values_yaml: str, namespace: str) -> tuple[tuple[str, str], ...]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values=yaml.safe_load(values_yaml), name=RELEASE, namespace=namespace, is_install=True)
    return tuple(sorted(rendered.items()))


def render_files(values: Mapping[str, Any] | None = None, namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` makes them."""
    return dict(_render_cached(yaml.safe_dump(dict(values or {})), namespace))


def render(values: Mapping[str, Any] | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every object the chart's templates render (not the CRDs, which Helm installs from crds/)."""
    objects: list[dict[str, Any]] = []
    for path, text in render_files(values, namespace).items():
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def chart_crds() -> list[dict[str, Any]]:
    """The CRD objects as Helm loads them from the chart's crds/ folder."""
    with helm.Chart.load(CHART) as chart:
        return [doc for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of this kind (and name, when given)."""
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in matches]}"
    return matches[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def rules_of(objects: list[dict[str, Any]], kind: str) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(namespace or None, rule) for every rule of every ClusterRole or Role."""
    for obj in objects:
        if obj["kind"] == kind:
            for rule in obj.get("rules") or []:
                yield obj["metadata"].get("namespace"), rule
