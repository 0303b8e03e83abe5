"""Graceful deletion of pods as on a node: bound pods stay Terminating until their kubelet removes them.

What is checked is kube-apiserver's behaviour (pod strategy ``CheckGracefulDelete``, ``rest.BeforeDelete``,
the binding subresource, ``ShouldDeleteDuringUpdate``), through HTTP where the client's DeleteOptions matter.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from etj_operator.sandbox.emulator import ApiError, EmulatorServer

NS = "default"


@pytest.fixture
def server():
    with EmulatorServer() as srv:
        yield srv


def make_pod(server: EmulatorServer, name: str, *, node: str | None = "node-1", grace: int | None = None,
             finalizers: list[str] | None = None) -> dict:
    spec: dict = {"containers": [{"name": "trainer", "image": "x"}]}
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    meta: dict = {"name": name}
    if finalizers:
        meta["finalizers"] = finalizers
    server.create("pods", {"metadata": meta, "spec": spec}, namespace=NS)
    if node is not None:
        server.bind_pod(NS, name, node)
    server.set_pod_phase(NS, name, "Running")
    return server.get("pods", NS, name) or {}


def http_delete(server: EmulatorServer, name: str, options: dict | None = None) -> tuple[int, dict]:
    token = server.kubeconfig()["users"][0]["user"]["token"]
    body = json.dumps({"kind": "DeleteOptions", "apiVersion": "v1", **(options or {})}).encode()
    request = urllib.request.Request(f"{server.url}/api/v1/namespaces/{NS}/pods/{name}", data=body, method="DELETE",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def stamp(pod: dict) -> datetime:
    return datetime.fromisoformat(pod["metadata"]["deletionTimestamp"].replace("Z", "+00:00"))


def test_an_unbound_pod_is_deleted_at_once(server):
    make_pod(server, "floating", node=None)
    code, _ = http_delete(server, "floating")
    assert code == 200
    assert server.get("pods", NS, "floating") is None


def test_a_bound_pod_stays_terminating_for_its_grace_period(server):
    make_pod(server, "bound", grace=20)
    before = datetime.now(UTC).replace(microsecond=0)
    code, answer = http_delete(server, "bound")
    after = datetime.now(UTC)
    assert code == 200 and answer["metadata"]["deletionGracePeriodSeconds"] == 20
    pod = server.get("pods", NS, "bound")
    assert pod is not None and pod["status"]["phase"] == "Running"  # the phase is the kubelet's to change
    assert pod["metadata"]["deletionGracePeriodSeconds"] == 20
    # the deletionTimestamp is the deadline (request time + grace), at second precision
    assert before + timedelta(seconds=20) <= stamp(pod) <= after + timedelta(seconds=20)
    assert pod["metadata"]["generation"] == 2  # BeforeDelete bumps it on a graceful delete
    # status writes during termination (the kubelet reporting) do not remove it
    server.set_pod_phase(NS, "bound", "Running", pod_ip="10.0.0.9")
    assert server.get("pods", NS, "bound") is not None


def test_delete_options_grace_period_is_used_and_can_only_shorten(server):
    make_pod(server, "shrinking", grace=30)
    code, first = http_delete(server, "shrinking", {"gracePeriodSeconds": 10})
    assert code == 200 and first["metadata"]["deletionGracePeriodSeconds"] == 10
    _, again = http_delete(server, "shrinking", {"gracePeriodSeconds": 20})  # longer: ignored
    assert again["metadata"]["deletionGracePeriodSeconds"] == 10
    assert again["metadata"]["deletionTimestamp"] == first["metadata"]["deletionTimestamp"]
    _, pending = http_delete(server, "shrinking")  # no period: the pending deletion stays as it is
    assert pending["metadata"]["resourceVersion"] == again["metadata"]["resourceVersion"]
    _, shorter = http_delete(server, "shrinking", {"gracePeriodSeconds": 4})
    assert shorter["metadata"]["deletionGracePeriodSeconds"] == 4
    assert stamp(first) - stamp(shorter) == timedelta(seconds=6)  # the deadline moved earlier by the difference
    code, _ = http_delete(server, "shrinking", {"gracePeriodSeconds": 0})  # kubectl delete --grace-period=0 --force
    assert code == 200 and server.get("pods", NS, "shrinking") is None


def test_a_negative_grace_period_counts_as_one_second(server):
    make_pod(server, "negative")
    _, answer = http_delete(server, "negative", {"gracePeriodSeconds": -5})
    assert answer["metadata"]["deletionGracePeriodSeconds"] == 1


def test_a_finished_pod_is_deleted_at_once_even_when_bound(server):
    make_pod(server, "done")
    server.set_pod_phase(NS, "done", "Failed", exit_code=1)
    http_delete(server, "done")
    assert server.get("pods", NS, "done") is None


def test_the_kubelet_finishes_termination_with_a_grace_0_delete_and_the_uid(server):
    pod = make_pod(server, "ending", grace=30)
    server.delete_pod(NS, "ending")
    with pytest.raises(ApiError) as conflict:  # a precondition on another UID (a newer pod of that name)
        server.delete_pod(NS, "ending", grace_period_seconds=0, uid="not-" + pod["metadata"]["uid"])
    assert conflict.value.code == 409
    last = server.finish_termination(NS, "ending", exit_code=143)
    assert last is not None and last["status"]["phase"] == "Failed"
    assert last["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143
    assert server.get("pods", NS, "ending") is None


def test_finishing_a_pod_that_is_not_terminating_is_refused(server):
    make_pod(server, "alive")
    with pytest.raises(ApiError) as refused:
        server.finish_termination(NS, "alive")
    assert refused.value.code == 409
    assert server.get("pods", NS, "alive") is not None


def test_finalizers_still_hold_a_pod_its_kubelet_has_removed(server):
    make_pod(server, "held", finalizers=["test.dev/hold"])
    server.delete_pod(NS, "held")
    server.finish_termination(NS, "held", exit_code=0)
    pod = server.get("pods", NS, "held")
    assert pod is not None and pod["metadata"]["deletionGracePeriodSeconds"] == 0
    server.patch("pods", NS, "held", {"metadata": {"finalizers": None}})
    assert server.get("pods", NS, "held") is None


def test_garbage_collection_deletes_bound_pods_gracefully(server):
    owner = server.create("configmaps", {"metadata": {"name": "owner"}}, namespace=NS)
    server.create("pods", {"metadata": {"name": "child", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}]},
        "spec": {"containers": [{"name": "trainer", "image": "x"}]}}, namespace=NS)
    server.bind_pod(NS, "child", "node-1")
    server.delete("configmaps", NS, "owner")
    pod = server.wait_for("pods", NS, "child", lambda p: bool(p and p["metadata"].get("deletionTimestamp")))
    assert pod is not None and pod["metadata"]["deletionGracePeriodSeconds"] == 30  # the pod's default
    server.finish_termination(NS, "child")
    assert server.get("pods", NS, "child") is None


def test_binding_twice_or_while_terminating_is_a_conflict(server):
    server.create("pods", {"metadata": {"name": "placed"}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
                  namespace=NS)
    pod = server.bind_pod(NS, "placed", "node-1")
    assert pod["spec"]["nodeName"] == "node-1"
    assert any(c["type"] == "PodScheduled" and c["status"] == "True" for c in pod["status"]["conditions"])
    with pytest.raises(ApiError) as twice:
        server.bind_pod(NS, "placed", "node-2")
    assert twice.value.code == 409 and "already assigned" in str(twice.value)
    server.create("pods", {"metadata": {"name": "late"}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
                  namespace=NS)
    server.patch("pods", NS, "late", {"metadata": {"finalizers": ["test.dev/hold"]}})
    server.delete_pod(NS, "late")  # unbound, so grace 0, but the finalizer keeps it
    with pytest.raises(ApiError) as deleting:
        server.bind_pod(NS, "late", "node-1")
    assert deleting.value.code == 409 and "being deleted" in str(deleting.value)
