"""Least privilege, checked both ways: the real operator runs a job's lifecycle against the API emulator, and

* every request it made (kopf's and the API wrapper's, told apart from the test's own by user agent) is allowed by
  the chart's rendered RBAC, in the scope it was made (cluster-wide or in a namespace);
* every permission the per-job Roles delegate is held by the operator (RBAC forbids granting what one lacks);
* every verb the chart grants was used by one of the above, or is on the short documented list below.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import pytest
from chart_support import ROOT, render, rules_of

from etj_operator import contract as c
from etj_operator.handlers import LEGACY_FINALIZER
from etj_operator.runner import OperatorThread
from etj_operator.sandbox.emulator import EmulatorServer

from emulated import NS, Cluster, wait_until
from jobs import job_manifest

#: The clients whose requests are the operator's: kopf, and the operator's own API wrapper (KubeApi).
OPERATOR_USER_AGENTS = ("kopf/", "etj-operator/")

#: Verbs granted although no exercised path uses them, and why. Keep this short; every entry needs a reason.
GRANTED_BUT_NOT_EXERCISED: dict[tuple[str, str, str], str] = {}


class Permission(NamedTuple):
    group: str
    resource: str  # plural, or plural/subresource
    verb: str
    namespace: str | None  # None: a cluster-scoped request, or one across all namespaces


def operator_requests(server: EmulatorServer) -> set[Permission]:
    used = set()
    for r in server.requests:
        if not r.user_agent.startswith(OPERATOR_USER_AGENTS) or r.verb is None or r.resource is None:
            continue  # discovery (/api, /apis/...) needs no RBAC rule
        resource = f"{r.resource}/{r.subresource}" if r.subresource else r.resource
        used.add(Permission(r.group or "", resource, r.verb, r.namespace))
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
    cluster.server.delete(c.PLURAL, NS, "rbac-gone")
    wait_until(lambda: cluster.job("rbac-gone") is None, what="job deleted")
    # a job from an earlier operator version carries its finalizer: the operator patches it off (upgrade path)
    legacy = job_manifest("rbac-legacy", replicas=1)
    legacy["metadata"]["finalizers"] = [LEGACY_FINALIZER]
    cluster.apply(legacy)
    wait_until(lambda: not (cluster.job("rbac-legacy") or {})["metadata"].get("finalizers"), what="finalizer off")
    return roles


@pytest.fixture
def server(tmp_path, monkeypatch):
    with EmulatorServer(crds=[ROOT / "crds" / "efficienttrainingjobs.yaml"]) as srv:
        monkeypatch.setenv("KUBECONFIG", str(srv.write_kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
        monkeypatch.setenv("ETJ_METRICS_PORT", "0")
        yield srv


@pytest.mark.parametrize("watch_namespaces", [[], [NS]], ids=["cluster-wide", "watch-namespaces"])
def test_chart_rbac_allows_exactly_what_the_operator_uses(server, watch_namespaces):
    with OperatorThread(namespaces=watch_namespaces, quiet=True):
        job_roles = run_lifecycle(Cluster(server))
    used = operator_requests(server)
    # the log holds the operator's requests, not only kopf's watches: the lifecycle really went through
    assert {
        ("", "pods", "create"),
        ("", "pods", "delete"),
        (c.GROUP, f"{c.PLURAL}/status", "patch"),
        (c.GROUP, c.PLURAL, "delete"),
        ("", "events", "create"),
    } <= {(p.group, p.resource, p.verb) for p in used}
    # the test's own accessors run in-process and never show up as the operator's
    assert not any(p.verb == "create" and p.resource == c.PLURAL for p in used)
    delegated = delegated_permissions(job_roles)
    assert Permission(c.GROUP, f"{c.PLURAL}/status", "patch", NS) in delegated

    objects = render({"watchNamespaces": watch_namespaces})
    missing = sorted(p for p in used | delegated if not allowed(objects, p))
    assert missing == [], f"the chart's RBAC does not allow: {missing}"

    needed = {(p.group, p.resource, p.verb) for p in used | delegated} | set(GRANTED_BUT_NOT_EXERCISED)
    unused = sorted(set(granted(objects)) - needed)
    assert unused == [], f"the chart grants verbs the operator never uses: {unused}"

    if watch_namespaces:  # namespaced work stays out of the ClusterRole
        cluster_scoped = {"customresourcedefinitions", "namespaces", "nodes"}
        for _, rule in rules_of(objects, "ClusterRole"):
            assert set(rule["resources"]) <= cluster_scoped, rule
