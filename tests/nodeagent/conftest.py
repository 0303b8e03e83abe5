"""Fixtures of the node agent's tests (helpers in agentkit.py, importable from this folder)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from agentkit import NODE, FakeAllocations, FakeClock, FakeCluster

from etj_operator.nodeagent.gpus import SimulatedBackend


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def kubelet() -> FakeAllocations:
    return FakeAllocations()


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    return tmp_path / "nodes" / NODE


@pytest.fixture
def gpus(node_dir: Path) -> SimulatedBackend:
    return SimulatedBackend(node_dir, NODE, count=4)
