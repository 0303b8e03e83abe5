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


def test_a_full_render_with_the_node_agent_gives_the_operators_token_not_the_agents():
    """The agent's ClusterRoleBinding renders before the operator's: the token follows the Deployment's account."""
    from etj_operator.sandbox.emulator import EmulatorServer

    rendered = render({"nodeAgent": {"enabled": True}})
    bindings = [o for o in rendered if o["kind"] == "ClusterRoleBinding"]
    assert len(bindings) == 2  # the operator's and the agent's
    deployment = find(rendered, "Deployment")
    operator_account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    with EmulatorServer() as server:
        token = identities.install_operator_identity(server, rendered)
        user = server.access.authenticator.authenticate(f"Bearer {token}")
        assert user.name.endswith(f":{operator_account}"), user.name
