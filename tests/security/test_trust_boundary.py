"""The trust boundary between a job's workload and the operator, enforced by the API server's RBAC.

The real operator runs as the chart's ServiceAccount against the emulator with RBAC (and
OwnerReferencesPermissionEnforcement) on, and creates two jobs' children as in production. Each job's pods hold
a token of the job's own ServiceAccount ``<job>-etj`` (what the projected token volume gives them). With it:

* every forged write of what the operator owns is refused (403): the job's status (phase, restarts, energy,
  control, policy, conditions, placement, workload), the job itself (spec, metadata, deletion), another job's
  status, another job's report, a new report, the report's own metadata, its deletion;
* the one write it has is allowed: its own report's status (merge patch), and the operator mirrors it into
  the job's ``status.workload``; a status write carrying metadata changes none of it (statusStrategy);
* the harness's own client (``KubernetesJobApi``) reads ``status.control`` and writes its report with that token;
* two jobs' pods cannot read or write each other's report.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from etj_operator import contract as c
from etj_operator.runner import OperatorThread
from etj_operator.sandbox.emulator import EmulatorServer

from emulated import NS, Cluster, operator_kubeconfig, operator_refusals, rbac_server, wait_until
from jobs import job_manifest

MERGE = "application/merge-patch+json"
JOBS = ("alpha", "beta")


def job_path(name: str, subresource: str = "") -> str:
    return f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.PLURAL}/{name}" + (f"/{subresource}" if subresource else "")


def report_path(name: str | None = None, subresource: str = "") -> str:
    base = f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.REPORT_PLURAL}"
    return base if name is None else f"{base}/{name}" + (f"/{subresource}" if subresource else "")


def send(server: EmulatorServer, token: str, method: str, path: str, body: Any = None,
         content_type: str = MERGE) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}",
               "Content-Type": content_type if method == "PATCH" else "application/json"}
    request = urllib.request.Request(server.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status), json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as e:
        return int(e.code), json.loads(e.read() or b"null")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, dict[str, str]]]:
    """Two running jobs made by the real operator under the chart's RBAC, and each job's pod token."""
    with pytest.MonkeyPatch.context() as patch, rbac_server() as server:
        kubeconfig = operator_kubeconfig(server, tmp_path_factory.mktemp("operator") / "kubeconfig")
        patch.setenv("KUBECONFIG", str(kubeconfig))
        patch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
        patch.setenv("ETJ_METRICS_PORT", "0")
        with OperatorThread(quiet=True):
            cluster = Cluster(server)
            for name in JOBS:
                body = job_manifest(name, replicas=1, runPolicy={"backoffLimit": 1})
                for key in ("uid", "generation"):
                    body["metadata"].pop(key)
                cluster.apply(body)
            for name in JOBS:
                cluster.wait_pods(name, 1)
                cluster.set_phase(name, "Running")
                cluster.wait_phase(name, "Running")
            tokens = {name: server.service_account_token(NS, f"{name}-etj") for name in JOBS}
            yield cluster, tokens
        assert operator_refusals(server) == []


FORGED_JOB_STATUS = [
    ("phase Succeeded", {"status": {"phase": "Succeeded"}}),
    ("restarts 0", {"status": {"restarts": 0}}),
    ("energy reset", {"status": {"energy": {"joules": 0, "kilowattHours": 0, "series": {}, "history": []}}}),
    ("control", {"status": {"control": {c.CONTROL_STOP_REQUESTED: False, c.CONTROL_POWER_LIMIT_WATTS_PER_GPU: None}}}),
    ("policy", {"status": {"policy": {"budgetNotified": True}}}),
    ("placement", {"status": {"placement": {"reschedules": 0, "avoidedNodes": []}}}),
    ("conditions", {"status": {"conditions": []}}),
    ("workload", {"status": {c.WORKLOAD: {c.WORKLOAD_STEP: 10**9}}}),
]


@pytest.mark.parametrize(("what", "body"), FORGED_JOB_STATUS, ids=[w for w, _ in FORGED_JOB_STATUS])
def test_the_pods_token_cannot_write_its_jobs_status(cluster, what, body):
    cluster_, tokens = cluster
    before = cluster_.status("alpha")
    code, answer = send(cluster_.server, tokens["alpha"], "PATCH", job_path("alpha", "status"), body)
    assert code == 403, (what, code, answer)
    assert "efficienttrainingjobs/status" in answer["message"]
    code, _ = send(cluster_.server, tokens["alpha"], "PATCH", job_path("alpha", "status"),
                   [{"op": "replace", "path": "/status/phase", "value": "Succeeded"}], "application/json-patch+json")
    assert code == 403
    code, _ = send(cluster_.server, tokens["alpha"], "PUT", job_path("alpha", "status"),
                   {**(cluster_.job("alpha") or {}), **body})
    assert code == 403
    after = cluster_.status("alpha")
    for key in ("phase", "restarts", "energy", "control"):
        assert after.get(key) == before.get(key), key
    assert cluster_.status("alpha")["phase"] == "Running"


WRITES = [
    ("job spec", "PATCH", lambda me, other: job_path(me), {"spec": {"runPolicy": {"backoffLimit": 100}}}),
    ("job metadata", "PATCH", lambda me, other: job_path(me), {"metadata": {"labels": {"x": "y"}}}),
    ("job delete", "DELETE", lambda me, other: job_path(me), None),
    ("job create", "POST", lambda me, other: f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.PLURAL}",
     job_manifest("forged")),
    ("other job's status", "PATCH", lambda me, other: job_path(other, "status"), {"status": {"phase": "Failed"}}),
    ("other job's report status", "PATCH", lambda me, other: report_path(other, "status"),
     {"status": {c.WORKLOAD_STEP: 1, c.WORKLOAD_CHECKPOINT: {"acknowledged": 99}}}),
    ("other job's report read", "GET", lambda me, other: report_path(other), None),
    ("report create", "POST", lambda me, other: report_path(),
     {"apiVersion": c.API_VERSION, "kind": c.REPORT_KIND, "metadata": {"name": "forged"}}),
    ("reports list", "GET", lambda me, other: report_path(), None),
    ("own report metadata", "PATCH", lambda me, other: report_path(me), {"metadata": {"ownerReferences": []}}),
    ("own report delete", "DELETE", lambda me, other: report_path(me), None),
    ("own report status replace", "PUT", lambda me, other: report_path(me, "status"),
     lambda me: {"apiVersion": c.API_VERSION, "kind": c.REPORT_KIND, "metadata": {"name": me}, "status": {}}),
]


@pytest.mark.parametrize(("what", "method", "path", "body"), WRITES, ids=[w[0] for w in WRITES])
@pytest.mark.parametrize(("me", "other"), [("alpha", "beta"), ("beta", "alpha")], ids=["alpha", "beta"])
def test_the_pods_token_cannot_touch_anything_else(cluster, me, other, what, method, path, body):
    cluster_, tokens = cluster
    code, answer = send(cluster_.server, tokens[me], method, path(me, other), body(me) if callable(body) else body)
    assert code == 403, (what, code, answer)
    assert cluster_.job(me) is not None and cluster_.server.get(c.REPORT_PLURAL, NS, me) is not None
    report = cluster_.server.get(c.REPORT_PLURAL, NS, other) or {}
    assert (report.get("status") or {}).get(c.WORKLOAD_CHECKPOINT) != {"acknowledged": 99}


def test_the_pods_token_writes_its_own_reports_status_and_the_operator_mirrors_it(cluster):
    cluster_, tokens = cluster
    code, report = send(cluster_.server, tokens["alpha"], "GET", report_path("alpha"))
    assert code == 200 and report["metadata"]["ownerReferences"][0]["uid"] == cluster_.job("alpha")["metadata"]["uid"]
    progress = {c.WORKLOAD_STEP: 42, c.WORKLOAD_EPOCH: 1, "stages": [{"name": "prune", "applied": True}]}
    code, _ = send(cluster_.server, tokens["alpha"], "PATCH", report_path("alpha", "status"), {"status": progress})
    assert code == 200
    wait_until(lambda: cluster_.status("alpha").get(c.WORKLOAD, {}).get(c.WORKLOAD_STEP) == 42,
               what="the operator to mirror the report into status.workload")
    status = cluster_.status("alpha")
    assert status[c.WORKLOAD] == progress
    assert status["stage"] == "prune"
    # beta's report is untouched, and beta's job shows nothing of alpha's
    assert c.WORKLOAD_STEP not in (cluster_.server.get(c.REPORT_PLURAL, NS, "beta") or {}).get("status", {})
    assert cluster_.status("beta").get(c.WORKLOAD, {}).get(c.WORKLOAD_STEP) != 42


def test_a_status_write_cannot_change_the_reports_metadata(cluster):
    cluster_, tokens = cluster
    before = cluster_.server.get(c.REPORT_PLURAL, NS, "beta")
    assert before is not None
    code, written = send(cluster_.server, tokens["beta"], "PATCH", report_path("beta", "status"), {
        "metadata": {"ownerReferences": [], "labels": {"forged": "yes"}, "finalizers": ["x/y"]},
        "spec": {"forged": True},
        "status": {c.WORKLOAD_STEP: 7},
    })
    assert code == 200
    for field in ("ownerReferences", "labels", "annotations", "finalizers", "uid", "creationTimestamp"):
        assert written["metadata"].get(field) == before["metadata"].get(field), field
    assert "spec" not in written or written["spec"] == before.get("spec")
    assert written["status"] == {c.WORKLOAD_STEP: 7}


def test_a_hostile_report_is_bounded_by_the_schema(cluster):
    cluster_, tokens = cluster
    for status in ({c.WORKLOAD_STOP_REASON: "x" * 100_000}, {c.WORKLOAD_STAGES: [{"name": "s"}] * 1000},
                   {c.WORKLOAD_STEP: -1}, {c.WORKLOAD_CHECKPOINT: {"path": "/" * 10_000}}):
        code, answer = send(cluster_.server, tokens["alpha"], "PATCH", report_path("alpha", "status"),
                            {"status": status})
        assert code == 422, (status.keys(), code, answer)
    # an unknown field is pruned: nothing of it is stored
    code, written = send(cluster_.server, tokens["alpha"], "PATCH", report_path("alpha", "status"),
                         {"status": {"blob": "x" * 100_000}})
    assert code == 200 and "blob" not in written["status"]


def test_the_harness_client_uses_exactly_this_access(cluster, tmp_path: Path):
    """etj_workload.control.KubernetesJobApi with the pod's token: read status.control, write the report."""
    from etj_workload.control import ControlState, KubernetesJobApi
    from etj_workload.kubeclient import ApiError, KubeClient, kubeconfig_credentials

    cluster_, tokens = cluster
    kubeconfig = cluster_.server.write_kubeconfig(tmp_path / "pod-kubeconfig", token=tokens["beta"])
    client = KubeClient(kubeconfig_credentials(kubeconfig))  # as __init__, with this kubeconfig rather than $KUBECONFIG
    api = KubernetesJobApi("beta", NS, client=client)
    assert isinstance(ControlState.from_status(api.read_control()), ControlState)
    api.patch_workload({c.WORKLOAD_STEP: 11, c.WORKLOAD_CHECKPOINT: {"acknowledged": 0}})
    assert (cluster_.server.get(c.REPORT_PLURAL, NS, "beta") or {})["status"][c.WORKLOAD_STEP] == 11
    wait_until(lambda: cluster_.status("beta").get(c.WORKLOAD, {}).get(c.WORKLOAD_STEP) == 11,
               what="beta's report mirrored")
    other = KubernetesJobApi("alpha", NS, client=client)
    with pytest.raises(ApiError) as refused:
        other.patch_workload({c.WORKLOAD_STEP: 1})
    assert refused.value.code == 403
    with pytest.raises(ApiError) as refused:
        other.read_control()
    assert refused.value.code == 403
