"""GitOps fit: the Argo CD health check (run for real in Lua 5.1, as Argo CD's gopher-lua) and the deploy/ examples."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from chart_support import CHART, ROOT

from etj_operator import contract

lupa = pytest.importorskip(
    "lupa.lua51", reason="lupa (Lua 5.1 for Python) is a dev dependency: pip install -e '.[dev]'"
)

DEPLOY = ROOT / "deploy"
HEALTH_LUA = DEPLOY / "argocd" / "health-efficienttrainingjob.lua"
HEALTH_KEY = f"resource.customizations.health.{contract.GROUP}_{contract.KIND}"


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """Run the health check on ``obj`` the way Argo CD does: ``obj`` global, the script returns ``hs``."""
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    hs = runtime.execute(HEALTH_LUA.read_text())
    return hs["status"], hs["message"]


def job(phase: str | None = None, generation: int = 2, observed: int | None = 2, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": "digits", "namespace": "ml", "generation": generation},
        "spec": {"replicas": 2},
    }
    if phase is not None:
        body["status"] = {"phase": phase, **status}
        if observed is not None:
            body["status"]["observedGeneration"] = observed
    return body


def condition(ctype: str, message: str, status: str = "True") -> dict[str, str]:
    return {"type": ctype, "status": status, "reason": "Test", "message": message}


@pytest.mark.parametrize(
    ("obj", "expected_status", "in_message"),
    [
        (job(None), "Progressing", "Waiting for the operator"),
        (job("Running", generation=3, observed=2), "Progressing", "observe generation 3"),
        (job("Running", observed=None), "Progressing", "observe generation 2"),
        (job("Pending"), "Progressing", "worker pods"),
        (job("Running"), "Progressing", "Training"),
        (job("Running", workload={"step": 120, "epoch": 1}), "Progressing", "step 120"),
        (job("Restarting", restarts=2), "Progressing", "restarts: 2"),
        (job("Throttled", control={"powerLimitWattsPerGPU": 450}), "Progressing", "450 W per GPU"),
        (job("Throttled"), "Progressing", "lowered GPU power limit"),
        (job("Rescheduling"), "Progressing", "checkpoint"),
        (job("Paused"), "Suspended", "energy policy"),
        (job("Queued", conditions=[condition("Queued", "couldn't assign flavors to pod set worker")]), "Suspended",
         "couldn't assign flavors"),
        (job("Queued"), "Suspended", "Waiting for Kueue"),
        (job("Suspended", conditions=[condition("Suspended", "suspended by Kueue")]), "Suspended", "by Kueue"),
        (job("Succeeded", conditions=[condition("Succeeded", "all workers exited 0")]), "Healthy", "exited 0"),
        (job("Succeeded"), "Healthy", "Training finished"),
        (job("Failed", conditions=[condition("Failed", "worker-1 failed with exit code 137")]), "Degraded", "137"),
        (job("Failed", conditions=[condition("Failed", "")]), "Degraded", "Training failed"),
        (
            job("Failed", conditions=[condition("Invalid", "spec.energy.power.limitWatts is required")]),
            "Degraded",
            "limitWatts",
        ),
        (job("Running", conditions=[condition("Invalid", "old problem", status="False")]), "Progressing", "Training"),
        (job("Exploded"), "Unknown", "Exploded"),
    ],
)
def test_health_of_each_phase(obj, expected_status, in_message):
    status, message = health(obj)
    assert status == expected_status
    assert in_message in message


def test_every_phase_of_the_api_has_a_known_health():
    for phase in contract.PHASES:
        status, _ = health(job(phase))
        assert status in {"Healthy", "Progressing", "Degraded", "Suspended"}, phase


def test_every_phase_the_crd_allows_is_a_phase_of_the_contract():
    crd = yaml.safe_load((ROOT / "crds" / "efficienttrainingjobs.yaml").read_text())
    status_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert set(status_schema["properties"]["phase"]["enum"]) == set(contract.PHASES)


def test_the_argocd_cm_patch_carries_the_same_script():
    patch = yaml.safe_load((DEPLOY / "argocd" / "argocd-cm-patch.yaml").read_text())
    assert patch["data"][HEALTH_KEY] == HEALTH_LUA.read_text()


def test_deploy_examples_point_at_the_chart_and_its_profiles():
    chart_path = str(CHART.relative_to(ROOT))
    app = yaml.safe_load((DEPLOY / "argocd" / "application-operator.yaml").read_text())
    assert app["spec"]["source"]["path"] == chart_path
    for values_file in app["spec"]["source"]["helm"]["valueFiles"]:
        assert (CHART / values_file).is_file()
    jobs_app = yaml.safe_load((DEPLOY / "argocd" / "application-jobs.yaml").read_text())
    (ignored,) = jobs_app["spec"]["ignoreDifferences"]
    assert ignored["group"] == contract.GROUP and ignored["kind"] == contract.KIND
    assert "/spec/suspend" in ignored["jsonPointers"]
    flux = list(yaml.safe_load_all((DEPLOY / "flux" / "helmrelease.yaml").read_text()))
    release = next(d for d in flux if d["kind"] == "HelmRelease")
    assert release["spec"]["chart"]["spec"]["chart"] == chart_path
    for values_file in release["spec"]["chart"]["spec"]["valuesFiles"]:
        assert (ROOT / values_file).is_file()
    assert release["spec"]["upgrade"]["crds"] == "CreateReplace"
