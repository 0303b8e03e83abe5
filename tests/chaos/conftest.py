"""Chaos tests: shared fixtures (one Prometheus for the chaos tests) and the ``chaos_long`` switch.

The long run is skipped unless ``--chaos-long`` is given. pytest reads a conftest's options only when the
conftest is loaded at startup, i.e. when tests/chaos (or a file in it) is named on the command line:
``pytest tests/chaos --chaos-long``. From the repository root, ``ETJ_CHAOS_LONG=1 pytest`` does the same.
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--chaos-long", action="store_true", default=False, help="run the long chaos run (chaos_long)")


def _long_enabled(config: pytest.Config) -> bool:
    try:
        if config.getoption("--chaos-long"):
            return True
    except ValueError:  # the option is unknown when this conftest was not loaded at startup
        pass
    return os.environ.get("ETJ_CHAOS_LONG", "") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _long_enabled(config):
        return
    skip = pytest.mark.skip(reason="long chaos run: pass --chaos-long (pytest tests/chaos --chaos-long)")
    for item in items:
        if "chaos_long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def exporter():
    from dcgm_exporter import DcgmExporter

    with DcgmExporter() as exp:
        yield exp


@pytest.fixture(scope="session")
def prometheus(exporter):
    from prometheus_server import PrometheusServer, ScrapeJob, find_prometheus

    if find_prometheus() is None:
        pytest.skip("needs the Debian 'prometheus' binary (.ci/run installs it)")
    with PrometheusServer([ScrapeJob("dcgm", [exporter.address])], scrape_interval_seconds=1.0) as prom:
        yield prom


@pytest.fixture
def chaos_server():

    from emulated import rbac_server

    # RBAC on: chaos_env gives the operator the chart's ServiceAccount under the chart's rules
    with rbac_server(event_log_size=100000) as server:
        yield server


@pytest.fixture
def chaos_env(chaos_server, prometheus, tmp_path, monkeypatch):
    """The operator's environment, for a thread (monkeypatched here) and a child process alike."""
    from emulated import operator_kubeconfig

    env = {
        "KUBECONFIG": str(operator_kubeconfig(chaos_server, tmp_path / "kubeconfig")),
        "ETJ_RECONCILE_INTERVAL_SECONDS": "0.5",
        "ETJ_TELEMETRY_INTERVAL_SECONDS": "1",
        "ETJ_METRICS_PORT": "0",
        "ETJ_PROMETHEUS_URL": prometheus.url,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
