"""Fixtures for the operator's integration tests: the Kubernetes API emulator and clients bound to it."""

from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from etj_operator.sandbox.emulator import EmulatorServer

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT / "crds"


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """A started API emulator (own thread and loop) serving the project's CRDs from crds/."""
    with EmulatorServer() as server:
        server.load_crds(CRD_DIR)
        yield server


@pytest.fixture
def emulator_kubeconfig(emulator: EmulatorServer, tmp_path: Path) -> Path:
    """A kubeconfig file for the emulator (token user), for kopf, kubectl and the kubernetes client."""
    return emulator.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def kube_client(emulator_kubeconfig: Path) -> Iterator[kubernetes.client.ApiClient]:
    """A ``kubernetes`` ApiClient for the emulator, built explicitly (never from $KUBECONFIG)."""
    client = kubernetes.config.new_client_from_config(config_file=str(emulator_kubeconfig))
    try:
        yield client
    finally:
        client.close()
