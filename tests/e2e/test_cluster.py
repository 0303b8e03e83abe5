"""The whole loop on a real cluster: install the chart, run the digits example, see it succeed with energy in status.

Runs only with ``--kube-config PATH`` (tests marked ``cluster`` are skipped otherwise); .github/workflows/e2e-kind.yml
runs it on kind. The images must already be in the cluster (``kind load docker-image``); name them with
ETJ_E2E_OPERATOR_IMAGE and ETJ_E2E_WORKLOAD_IMAGE (defaults: etj-operator:e2e and etj-workload:e2e). A cluster
without GPUs is fine: the chart's kind profile makes the workers use the simulated GPU.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from etj_operator import contract as c

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "efficient-training-operator"
RELEASE = "etj-e2e"
OPERATOR_NAMESPACE = "etj-system"
JOB_NAMESPACE = "etj-e2e"
JOB_TIMEOUT_SECONDS = float(os.environ.get("ETJ_E2E_JOB_TIMEOUT_SECONDS", "1200"))

pytestmark = pytest.mark.cluster


def _image(variable: str, default: str) -> tuple[str, str]:
    repository, _, tag = os.environ.get(variable, default).rpartition(":")
    return repository, tag


@pytest.fixture(scope="module")
def kube_config(request: pytest.FixtureRequest) -> str:
    path = request.config.getoption("--kube-config")
    assert path, "run with --kube-config PATH"
    return str(path)


@pytest.fixture(scope="module")
def api(kube_config: str) -> Iterator[Any]:
    import kubernetes

    client = kubernetes.config.new_client_from_config(config_file=kube_config)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def operator_release(kube_config: str) -> Iterator[dict[str, Any]]:
    """The chart installed with its kind profile, waited for; uninstalled afterwards (the CRD stays, as with Helm)."""
    import helm_python as helm

    values = yaml.safe_load((CHART / "ci" / "kind-values.yaml").read_text())
    repository, tag = _image("ETJ_E2E_OPERATOR_IMAGE", "etj-operator:e2e")
    values["image"].update(repository=repository, tag=tag)
    with helm.Config(kubeconfig_path=kube_config, namespace=OPERATOR_NAMESPACE) as config:
        config.uninstall(RELEASE, ignore_not_found=True, wait="watcher", timeout=120)
        release = config.install(
            str(CHART),
            RELEASE,
            values,
            namespace=OPERATOR_NAMESPACE,
            create_namespace=True,
            wait="watcher",
            timeout=300,
        )
        try:
            yield release
        finally:
            config.uninstall(RELEASE, ignore_not_found=True, wait="watcher", timeout=120)


def digits_job() -> dict[str, Any]:
    """workloads/examples/digits-ddp.yaml, in the test namespace, on the e2e workload image, without GPU requests."""
    docs = yaml.safe_load_all((ROOT / "workloads" / "examples" / "digits-ddp.yaml").read_text())
    job = copy.deepcopy(next(d for d in docs if d["kind"] == c.KIND))
    job["metadata"]["namespace"] = JOB_NAMESPACE
    job["spec"]["checkpoint"]["volume"] = {"emptyDir": {}}  # kind's storage class has no ReadWriteMany claims
    repository, tag = _image("ETJ_E2E_WORKLOAD_IMAGE", "etj-workload:e2e")
    for container in job["spec"]["template"]["spec"]["containers"]:
        if container["name"] == c.TRAINER_CONTAINER:
            container["image"] = f"{repository}:{tag}"
            container["imagePullPolicy"] = "IfNotPresent"
            container["resources"] = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
    return job


def test_digits_example_succeeds_with_energy_in_status(api, operator_release):
    import kubernetes

    assert operator_release["name"] == RELEASE
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    try:
        core.create_namespace({"metadata": {"name": JOB_NAMESPACE}})
    except kubernetes.client.ApiException as e:
        if e.status != 409:
            raise
    job = digits_job()
    name = job["metadata"]["name"]
    try:
        custom.delete_namespaced_custom_object(c.GROUP, c.VERSION, JOB_NAMESPACE, c.PLURAL, name)
        time.sleep(5)
    except kubernetes.client.ApiException as e:
        if e.status != 404:
            raise
    custom.create_namespaced_custom_object(c.GROUP, c.VERSION, JOB_NAMESPACE, c.PLURAL, job)

    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = (
            custom.get_namespaced_custom_object(c.GROUP, c.VERSION, JOB_NAMESPACE, c.PLURAL, name).get("status") or {}
        )
        if status.get("phase") in c.TERMINAL_PHASES:
            break
        time.sleep(5)
    assert status.get("phase") == "Succeeded", f"job ended as {status.get('phase')}: {status.get('conditions')}"
    assert status.get("observedGeneration") == 1
    energy = status.get("energy") or {}
    assert energy.get("joules", 0) > 0, f"no energy in status: {energy}"
    assert energy.get("kilowattHours", 0) > 0
    workers = core.list_namespaced_pod(JOB_NAMESPACE, label_selector=f"{c.LABEL_JOB_NAME}={name}").items
    assert workers, "the operator made no worker pods"
