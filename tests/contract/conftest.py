"""Fixtures of the contract tests: the CRD, parsed once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "crds" / "efficienttrainingjobs.yaml").read_text())


@pytest.fixture(scope="session")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    """The openAPIV3Schema of the CRD's one version."""
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]
