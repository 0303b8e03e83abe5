"""Docs that must match the code."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def spec_paths(node, path="spec"):
    for key, value in (node.get("properties") or {}).items():
        here = f"{path}.{key}"
        yield here
        if value.get("type") == "object" and here not in ("spec.template.spec", "spec.checkpoint.volume"):
            yield from spec_paths(value, here)
        items = value.get("items") or {}
        if value.get("type") == "array" and items.get("properties") and here != "spec.template.spec.containers":
            yield from spec_paths(items, here + "[]")


def test_every_spec_field_is_documented():
    crd = yaml.safe_load((ROOT / "crds" / "efficienttrainingjobs.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    doc = (ROOT / "docs" / "api.md").read_text()
    missing = [p for p in spec_paths(schema) if f"`{p}`" not in doc]
    assert not missing, f"docs/api.md lacks {missing}"
    assert len(list(spec_paths(schema))) > 50
