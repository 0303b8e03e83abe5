"""Least privilege, checked both ways: the real operator runs a job's lifecycle against the API emulator with
RBAC and OwnerReferencesPermissionEnforcement on, as the chart's ServiceAccount under the chart's rules
(rendered with the Helm engine), and

* the server refused it nothing (no 401/403, no denied admission check);
* every permission it was checked for (its requests, and the admission plugin's checks: delete on each object it
  sets an ownerReference on, update on the job's finalizers) is allowed by the chart's rendered RBAC, in the
  scope it was made (cluster-wide or in a namespace);
* every permission the per-job Roles delegate is held by the operator (RBAC forbids granting what one lacks);
* every verb the chart grants was used by one of the above, or is on the short documented list below;
* removing any single verb of any rule of the chart's ClusterRole makes a short lifecycle fail
  (``test_every_rule_of_the_chart_is_needed``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import pytest
from chart_support import render, rules_of

from etj_operator import contract as c
from etj_operator import kueue
from etj_operator.handlers import LEGACY_FINALIZER
from etj_operator.runner import OperatorThread
from etj_operator.sandbox.emulator import EmulatorServer
from etj_operator.sandbox.identities import OPERATOR_NAME, OPERATOR_NAMESPACE
from etj_operator.sandbox.kueue_standin import QueueSetup, StandInKueue

from emulated import (
    NS,
    OPERATOR_USER,
    OPERATOR_USER_AGENTS,
    Cluster,
    chart_rbac,
    operator_kubeconfig,
    operator_refusals,
    rbac_server,
    wait_until,
)
from jobs import job_manifest

#: Verbs granted although no exercised path uses them, and why. Keep this short; every entry needs a reason.
GRANTED_BUT_NOT_EXERCISED: dict[tuple[str, str, str], str] = {}


class Permission(NamedTuple):
    group: str
    resource: str  # plural, or plural/subresource
    verb: str
    namespace: str | None  # None: a cluster-scoped request, or one across all namespaces


def operator_requests(server: EmulatorServer) -> set[Permission]:
    """The operator's requests (by user agent) and, with RBAC on, every permission the server checked for it."""
    used = set()
    for r in server.requests:
        if not r.user_agent.startswith(OPERATOR_USER_AGENTS) or r.verb is None or r.resource is None:
            continue  # discovery (/api, /apis/...) needs no RBAC rule
        resource = f"{r.resource}/{r.subresource}" if r.subresource else r.resource
        used.add(Permission(r.group or "", resource, r.verb, r.namespace))
    for p in server.access.checked(OPERATOR_USER):
        if p.allowed:
            used.add(Permission(p.group, p.resource, p.verb, p.namespace))
    return used


def delegated_permissions(roles: list[dict[str, Any]]) -> set[Permission]:
    """What the operator grants each job's pods through the Roles it creates."""
    delegated = set()
    for role in roles:
        namespace = role["metadata"]["namespace"]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        delegated.add(Permission(group, resource, verb, namespace))
    return delegated


def _allows(rule: dict[str, Any], group: str, resource: str, verb: str) -> bool:
    return group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]


def allowed(objects: list[dict[str, Any]], p: Permission) -> bool:
    if any(_allows(rule, p.group, p.resource, p.verb) for _, rule in rules_of(objects, "ClusterRole")):
        return True
    return p.namespace is not None and any(
        ns == p.namespace and _allows(rule, p.group, p.resource, p.verb) for ns, rule in rules_of(objects, "Role")
    )


def granted(objects: list[dict[str, Any]]) -> Iterable[tuple[str, str, str]]:
    for kind in ("ClusterRole", "Role"):
        for _, rule in rules_of(objects, kind):
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        yield group, resource, verb


CHILD_RESOURCES = {("", "services"), ("", "serviceaccounts"), ("rbac.authorization.k8s.io", "roles"),
                   ("rbac.authorization.k8s.io", "rolebindings")}


def children_read(server: EmulatorServer) -> set[tuple[str, str]]:
    """The child kinds the operator has read (a create found the name taken: whose is the object?)."""
    return {(r.group or "", r.resource or "") for r in server.requests
            if r.user_agent.startswith(OPERATOR_USER_AGENTS) and r.verb == "get"} & CHILD_RESOURCES


def reapply_while_collection_is_behind(cluster: Cluster, name: str, wait, delete=None) -> None:
    """Delete the job (``delete``, else at once) while the garbage collector is behind and apply it again: every
    child create finds the old job's object (409) and reads it (``get``); the new job waits, then runs once the
    old job's objects are collected."""
    cluster.server.pause_garbage_collection()
    try:
        if delete is None:
            cluster.server.delete(c.PLURAL, NS, name)
        else:
            delete()
        wait(lambda: cluster.job(name) is None, "the first job deleted")
        body = job_manifest(name, replicas=1)
        for key in ("uid", "generation"):
            body["metadata"].pop(key, None)
        cluster.apply(body)
        wait(lambda: children_read(cluster.server) == CHILD_RESOURCES, "the taken children read")
    finally:
        cluster.server.resume_garbage_collection()
    uid = (cluster.job(name) or {})["metadata"]["uid"]
    wait(lambda: [p["metadata"]["ownerReferences"][0]["uid"] for p in cluster.live_pods(name)] == [uid],
         "the new job's pod")
    cluster.server.delete(c.PLURAL, NS, name)
    wait(lambda: cluster.job(name) is None, "the second job deleted")


def run_lifecycle(cluster: Cluster) -> list[dict[str, Any]]:
    """Create, run, gang-restart, succeed, TTL-delete one job; create and delete another; upgrade a third.

Returns the job Roles.
"""
    cluster.apply(job_manifest("rbac-gang", replicas=2, runPolicy={"ttlSecondsAfterFinished": 1}))
    cluster.wait_pods("rbac-gang", 2)
    roles = cluster.server.list("roles", NS)  # garbage-collected with the job later
    cluster.set_phase("rbac-gang", "Running")
    cluster.wait_phase("rbac-gang", "Running")
    cluster.set_phase("rbac-gang", "Failed", indices=[1], exit_code=137)
    cluster.wait_pods("rbac-gang", 2, generation=1)
    cluster.set_phase("rbac-gang", "Running")
    cluster.wait_phase("rbac-gang", "Running")
    cluster.set_phase("rbac-gang", "Succeeded")
    cluster.wait_phase("rbac-gang", "Succeeded")
    wait_until(lambda: cluster.job("rbac-gang") is None, timeout_seconds=15, what="job deleted by its TTL")
    cluster.apply(job_manifest("rbac-gone", replicas=1))
    cluster.wait_pods("rbac-gone", 1)
    # deleted while the garbage collector is behind and applied again: the child creates find the old children
    reapply_while_collection_is_behind(cluster, "rbac-gone", lambda predicate, what: wait_until(predicate, what=what))
    # a job from an earlier operator version carries its finalizer: the operator patches it off (upgrade path)
    legacy = job_manifest("rbac-legacy", replicas=1)
    legacy["metadata"]["finalizers"] = [LEGACY_FINALIZER]
    cluster.apply(legacy)
    wait_until(lambda: not (cluster.job("rbac-legacy") or {})["metadata"].get("finalizers"), what="finalizer off")
    return roles


def run_kueue_lifecycle(cluster: Cluster, standin: StandInKueue) -> None:
    """With Kueue on: queued jobs of both priority kinds admitted, run and finished; one suspended (its Workload
    deleted). The stand-in for Kueue's admission (not Kueue) admits by quota."""
    standin.add_queue(QueueSetup(quota={"nvidia.com/gpu": 2}))
    cluster.server.create("workloadpriorityclasses.kueue.x-k8s.io", {"metadata": {"name": "urgent"}, "value": 10})
    cluster.server.create("priorityclasses", {"metadata": {"name": "gold"}, "value": 5})
    with standin:
        labelled = job_manifest("rbac-queued", replicas=1)
        labelled["metadata"]["labels"] = {c.LABEL_KUEUE_QUEUE: "team-a", kueue.LABEL_PRIORITY_CLASS: "urgent"}
        template = job_manifest("rbac-classy")["spec"]["template"]
        template["spec"]["priorityClassName"] = "gold"
        classy = job_manifest("rbac-classy", replicas=1, template=template)
        classy["metadata"]["labels"] = {c.LABEL_KUEUE_QUEUE: "team-a"}
        for body in (labelled, classy):
            for key in ("uid", "generation"):
                body["metadata"].pop(key, None)
            cluster.apply(body)
        for name in ("rbac-queued", "rbac-classy"):
            cluster.wait_pods(name, 1)
        cluster.set_phase("rbac-queued", "Succeeded")
        cluster.wait_phase("rbac-queued", "Succeeded")

        def finished() -> bool:
            job = cluster.job("rbac-queued") or {"metadata": {"uid": ""}}
            wl = cluster.server.get("workloads.kueue.x-k8s.io", NS, kueue.workload_name("rbac-queued",
                                                                                       job["metadata"]["uid"]))
            return any(x["type"] == "Finished" for x in ((wl or {}).get("status") or {}).get("conditions") or [])

        wait_until(finished, what="the finished job's Workload marked Finished")
        cluster.server.patch(c.PLURAL, NS, "rbac-classy", {"spec": {"suspend": True}})
        wait_until(lambda: not cluster.server.list("workloads.kueue.x-k8s.io", NS,
                                                   label_selector=f"{c.LABEL_JOB_NAME}=rbac-classy"),
                   what="the suspended job's Workload deleted")
    assert standin.violations == []


@pytest.fixture
def server(monkeypatch):
    with rbac_server() as srv:
        monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
        monkeypatch.setenv("ETJ_METRICS_PORT", "0")
        yield srv


@pytest.mark.parametrize(
    ("watch_namespaces", "with_kueue"),
    [([], False), ([NS], False), ([], True), ([NS], True)],
    ids=["cluster-wide", "watch-namespaces", "cluster-wide-kueue", "watch-namespaces-kueue"],
)
def test_chart_rbac_allows_exactly_what_the_operator_uses(server, watch_namespaces, with_kueue, tmp_path, monkeypatch):
    kubeconfig = operator_kubeconfig(server, tmp_path / "kubeconfig", watch_namespaces=watch_namespaces,
                                     kueue=with_kueue)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("ETJ_KUEUE", "true" if with_kueue else "false")
    # leader election on, as the chart runs it (the Lease in the operator's namespace, under the release's name)
    for key, value in {
        "ETJ_LEADER_ELECTION": "true",
        "ETJ_LEADER_ELECTION_NAMESPACE": OPERATOR_NAMESPACE,
        "ETJ_LEADER_ELECTION_LEASE_NAME": OPERATOR_NAME,
        "ETJ_LEASE_DURATION_SECONDS": "3",
        "ETJ_RENEW_DEADLINE_SECONDS": "2",
        "ETJ_RETRY_PERIOD_SECONDS": "0.5",
    }.items():
        monkeypatch.setenv(key, value)
    # the operator's informers list Kueue's objects from its start: the CRDs come first
    standin = StandInKueue(server, interval_seconds=0.05).install() if with_kueue else None
    with OperatorThread(namespaces=watch_namespaces, quiet=True):
        job_roles = run_lifecycle(Cluster(server))
        if standin is not None:
            run_kueue_lifecycle(Cluster(server), standin)
    assert operator_refusals(server) == []
    used = operator_requests(server)
    # the log holds the operator's requests, not only kopf's watches: the lifecycle really went through
    assert {
        ("", "pods", "create"),
        ("", "pods", "delete"),
        (c.GROUP, f"{c.PLURAL}/status", "patch"),
        (c.GROUP, c.PLURAL, "delete"),
        ("", "events", "create"),
        ("", "services", "delete"),  # OwnerReferencesPermissionEnforcement: an ownerRef needs delete on the child
        (c.GROUP, f"{c.PLURAL}/finalizers", "update"),  # ... and blockOwnerDeletion update on the job's finalizers
        ("coordination.k8s.io", "leases", "create"),  # the Lease: taken, then renewed
        ("coordination.k8s.io", "leases", "update"),
    } <= {(p.group, p.resource, p.verb) for p in used}
    # the test's own accessors run in-process and never show up as the operator's
    assert not any(p.verb == "create" and p.resource == c.PLURAL for p in used)
    delegated = delegated_permissions(job_roles)
    assert Permission(c.GROUP, f"{c.REPORT_PLURAL}/status", "patch", NS) in delegated
    # the trust boundary: the pods may write their report's status, never the job's (the per-job Roles only:
    # with watchNamespaces the operator's own Role is in the namespace too)
    pods_may = delegated_permissions([r for r in job_roles if r["metadata"]["name"].endswith("-etj")])
    assert Permission(c.GROUP, f"{c.REPORT_PLURAL}/status", "patch", NS) in pods_may
    assert not [p for p in pods_may if p.resource == f"{c.PLURAL}/status"], pods_may

    objects = render({"watchNamespaces": watch_namespaces, "kueue": {"enabled": with_kueue}})
    missing = sorted(p for p in used | delegated if not allowed(objects, p))
    assert missing == [], f"the chart's RBAC does not allow: {missing}"

    needed = {(p.group, p.resource, p.verb) for p in used | delegated} | set(GRANTED_BUT_NOT_EXERCISED)
    unused = sorted(set(granted(objects)) - needed)
    assert unused == [], f"the chart grants verbs the operator never uses: {unused}"

    if watch_namespaces:  # namespaced work stays out of the ClusterRole
        cluster_scoped = {"customresourcedefinitions", "namespaces", "nodes", "resourceflavors",
                          "workloadpriorityclasses", "priorityclasses"}
        for _, rule in rules_of(objects, "ClusterRole"):
            assert set(rule["resources"]) <= cluster_scoped, rule


# ----- every rule is needed -------------------------------------------------------------------------------------


def single_verb_rules(objects: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The chart's ClusterRole split into (apiGroup, resource, verb) triples, one rule each."""
    return sorted({(g, r, v) for _, rule in rules_of(objects, "ClusterRole")
                   for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]})


def without(objects: list[dict[str, Any]], removed: tuple[str, str, str]) -> list[dict[str, Any]]:
    """The chart's RBAC objects with one verb of one resource taken out of its ClusterRole."""
    reduced = []
    for obj in objects:
        if obj["kind"] == "ClusterRole":
            rules = [
                {"apiGroups": [g], "resources": [r], "verbs": [v]}
                for g, r, v in single_verb_rules([obj])
                if (g, r, v) != removed
            ]
            obj = {**obj, "rules": rules}
        reduced.append(obj)
    return reduced


def short_lifecycle(cluster: Cluster, name: str, timeout_seconds: float = 15.0) -> None:
    """Create a one-pod job, run it, succeed, have it TTL-deleted while the garbage collector is behind and apply it
    again (the child creates find the old children and read them); a job of an earlier operator version has its
    finalizer patched off. Any refusal of the operator fails the lifecycle at once."""

    def step(predicate, what):
        def check():
            refused = operator_refusals(cluster.server)
            if refused:
                raise AssertionError(f"{what}: the operator was refused {refused}")
            return predicate()

        wait_until(check, timeout_seconds, what)

    body = job_manifest(name, replicas=1, runPolicy={"ttlSecondsAfterFinished": 0})
    for key in ("uid", "generation"):
        body["metadata"].pop(key, None)
    cluster.apply(body)
    step(lambda: len(cluster.live_pods(name)) == 1, "a pod created")
    cluster.set_phase(name, "Running")
    step(lambda: cluster.status(name).get("phase") == "Running", "phase Running")
    # the job succeeds and its TTL deletes it while the garbage collector is behind; it is applied again at once
    reapply_while_collection_is_behind(cluster, name, step, delete=lambda: cluster.set_phase(name, "Succeeded"))
    legacy = job_manifest(f"{name}-legacy", replicas=1)
    for key in ("uid", "generation"):
        legacy["metadata"].pop(key, None)
    legacy["metadata"]["finalizers"] = [LEGACY_FINALIZER]
    cluster.apply(legacy)
    step(lambda: not (cluster.job(f"{name}-legacy") or {})["metadata"].get("finalizers"), "legacy finalizer off")
    cluster.server.delete(c.PLURAL, NS, f"{name}-legacy")
    step(lambda: cluster.job(f"{name}-legacy") is None, "legacy job deleted")


@pytest.fixture(scope="module")
def shared_server():
    with rbac_server() as srv:
        yield srv


def test_every_rule_of_the_chart_is_needed(shared_server, tmp_path, monkeypatch):
    """Take each verb of each rule out of the chart's ClusterRole in turn: the short lifecycle fails every time
    (and passes with the whole ClusterRole, the control)."""
    monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("ETJ_METRICS_PORT", "0")
    objects = chart_rbac()
    cluster = Cluster(shared_server)
    outcomes: dict[tuple[str, str, str] | None, str] = {}
    for index, removed in enumerate([None, *single_verb_rules(objects)]):
        kubeconfig = operator_kubeconfig(shared_server, tmp_path / f"kubeconfig-{index}",
                                         objects=objects if removed is None else without(objects, removed))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        shared_server.clear_requests()
        shared_server.access.clear_checked()
        name = f"rule-{index}"
        try:
            with OperatorThread(quiet=True):
                short_lifecycle(cluster, name)
            outcomes[removed] = "passed"
        except AssertionError as e:
            outcomes[removed] = f"failed: {str(e).splitlines()[0][:200]}"
        finally:
            for leftover in (name, f"{name}-legacy"):
                if shared_server.get(c.PLURAL, NS, leftover) is not None:
                    shared_server.patch(c.PLURAL, NS, leftover, {"metadata": {"finalizers": []}})
                    shared_server.delete(c.PLURAL, NS, leftover)
    assert outcomes.pop(None) == "passed", "the lifecycle fails with the chart's whole ClusterRole"
    unneeded = sorted(rule for rule, outcome in outcomes.items() if outcome == "passed")
    assert unneeded == [], f"the lifecycle passes without these rules of the chart's ClusterRole: {unneeded}"
    assert len(outcomes) == len(single_verb_rules(objects))
