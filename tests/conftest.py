import sys
from pathlib import Path

import pytest

# tests/jobs.py is shared by several test folders.
sys.path.insert(0, str(Path(__file__).parent))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--kube-config", default=None, help="kubeconfig of a real cluster for tests marked 'cluster'")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--kube-config"):
        return
    skip = pytest.mark.skip(reason="needs a real cluster: pass --kube-config PATH")
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)
