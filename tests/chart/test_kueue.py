"""The chart's Kueue value (docs/kueue.md): off by default; on, the operator is told (ETJ_KUEUE) and gets the rules of
Kueue's job integration, in the ClusterRole or, with watchNamespaces, the namespaced ones in each namespace's Role.
That these rules are exactly what the operator uses is checked in test_rbac.py (with Kueue on); the integration
itself in tests/kueue/."""

from __future__ import annotations

import pytest
from chart_support import find, render, rules_of

from etj_operator.config import OperatorConfig
from etj_operator.sandbox import identities

KUEUE_GROUPS = {"kueue.x-k8s.io", "scheduling.k8s.io"}
NAMESPACED = {("kueue.x-k8s.io", "workloads"): ["list", "watch", "create", "delete"],
              ("kueue.x-k8s.io", "workloads/status"): ["patch"]}
CLUSTER = {("kueue.x-k8s.io", "resourceflavors"): ["list", "watch"],
           ("kueue.x-k8s.io", "workloadpriorityclasses"): ["get"],
           ("scheduling.k8s.io", "priorityclasses"): ["get"]}


def _env(values):
    (container,) = find(render(values), "Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def _kueue_rules(objects, kind):
    found = {}
    for namespace, rule in rules_of(objects, kind):
        for group in rule["apiGroups"]:
            if group in KUEUE_GROUPS:
                for resource in rule["resources"]:
                    found[(namespace, group, resource)] = rule["verbs"]
    return found


def test_kueue_is_off_by_default_and_grants_nothing_of_it():
    assert _env({})["ETJ_KUEUE"] == "false"
    assert OperatorConfig.from_env({"ETJ_KUEUE": "false"}).kueue is False
    objects = render({})
    assert _kueue_rules(objects, "ClusterRole") == {} and _kueue_rules(objects, "Role") == {}


def test_kueue_enabled_tells_the_operator_and_grants_the_integrations_rules():
    values = {"kueue": {"enabled": True}}
    env = _env(values)
    assert env["ETJ_KUEUE"] == "true"
    assert OperatorConfig.from_env(env).kueue is True
    rules = _kueue_rules(render(values), "ClusterRole")
    assert rules == {(None, g, r): v for (g, r), v in {**CLUSTER, **NAMESPACED}.items()}


def test_with_watch_namespaces_the_workload_rules_are_namespaced_and_the_reads_of_cluster_objects_are_not():
    values = {"kueue": {"enabled": True}, "watchNamespaces": ["ml-a", "ml-b"]}
    objects = render(values)
    assert _kueue_rules(objects, "ClusterRole") == {(None, g, r): v for (g, r), v in CLUSTER.items()}
    namespaced = {(ns, g, r): v for ns in ("ml-a", "ml-b") for (g, r), v in NAMESPACED.items()}
    assert _kueue_rules(objects, "Role") == namespaced


def test_the_sandbox_reading_of_the_kueue_rules_equals_what_helm_renders():
    rendered = find(render({"kueue": {"enabled": True}}), "ClusterRole")
    read = {o["kind"]: o for o in identities.chart_rbac_objects(kueue=True)}
    assert read["ClusterRole"]["rules"] == rendered["rules"]


def test_a_malformed_setting_is_named():
    with pytest.raises(ValueError, match="ETJ_KUEUE"):
        OperatorConfig.from_env({"ETJ_KUEUE": "sometimes"})
