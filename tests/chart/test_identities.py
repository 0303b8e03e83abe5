"""The sandbox reads the chart's RBAC without Helm (etj_operator.sandbox.identities); Helm must agree with it."""

from __future__ import annotations

from chart_support import find, render

from etj_operator.sandbox import identities


def test_the_sandbox_reading_of_the_chart_rbac_equals_what_helm_renders():
    rendered = render()
    cluster_role = find(rendered, "ClusterRole")
    binding = find(rendered, "ClusterRoleBinding")
    account = find(rendered, "ServiceAccount")
    read = {o["kind"]: o for o in identities.chart_rbac_objects()}

    assert read["ClusterRole"]["rules"] == cluster_role["rules"]
    assert read["ClusterRole"]["metadata"]["name"] == cluster_role["metadata"]["name"]
    assert read["ServiceAccount"]["metadata"]["name"] == account["metadata"]["name"]
    assert read["ServiceAccount"]["metadata"]["namespace"] == account["metadata"]["namespace"]
    assert read["ClusterRoleBinding"]["subjects"] == binding["subjects"]
    assert read["ClusterRoleBinding"]["roleRef"] == binding["roleRef"]
