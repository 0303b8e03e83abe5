"""Fixtures of the workload tests (helpers live in workload_support.py)."""

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

# The project runs pytest with --import-mode=importlib: make this folder's helper module importable.
sys.path.insert(0, str(Path(__file__).parent))

from workload_support import FakeJobApiServer, WorldResult, run_world


@pytest.fixture
def launch(tmp_path: Path) -> Any:
    def _launch(args: Sequence[str], **kwargs: Any) -> WorldResult:
        return run_world(args, tmp_path, **kwargs)

    return _launch


@pytest.fixture
def fake_api(tmp_path: Path) -> Iterator[Any]:
    server = FakeJobApiServer()
    server.kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")  # type: ignore[attr-defined]
    yield server
    server.close()
