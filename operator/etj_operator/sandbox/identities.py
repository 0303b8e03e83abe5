"""Who is who in the sandbox and the tests: the operator as the chart's ServiceAccount, each pod as its own.

* :func:`chart_rbac_objects` reads the operator's RBAC from the Helm chart (``charts/efficient-training-operator``:
  the ``etj.rbac.*Rules`` templates of ``_helpers.tpl``) for the cluster-wide install, without Helm (the
  sandbox does not depend on it; ``tests/chart`` checks this reading against Helm's own rendering).
* :func:`install_operator_identity` loads such objects (a ServiceAccount, ClusterRole and ClusterRoleBinding,
  Roles and RoleBindings) into an emulator and returns a token of the operator's ServiceAccount.
* :func:`node_agent_rbac_objects`: the node agent's ServiceAccount and its read-only rules (``list`` pods,
  ``get`` efficienttrainingjobs: the two reads of ``etj_operator.nodeagent.kube``), which the sandbox's agents
  run as. The chart has no DaemonSet yet, so these are written here, not read from it.
* :func:`pod_kubeconfig` writes the kubeconfig a pod's processes get: its ServiceAccount's token, as the
  projected token volume gives a pod on a node.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import yaml

from etj_operator import contract
from etj_operator.packagedata import data_path

if TYPE_CHECKING:
    from etj_operator.sandbox.emulator import EmulatorServer

Json = dict[str, Any]

REPO_ROOT: Final = pathlib.Path(__file__).resolve().parents[3]
CHART_DIR: Final = data_path("chart")  # the chart, or in a wheel the copy of its RBAC helpers
#: The chart's names for ``helm install etj ... -n etj-system`` (what the docs install).
OPERATOR_NAMESPACE: Final = "etj-system"
OPERATOR_NAME: Final = "etj-efficient-training-operator"
#: The node agent's ServiceAccount (and ClusterRole) in the sandbox.
NODE_AGENT_NAME: Final = "etj-node-agent"
#: What the node agent reads (docs/node-agent.md, "Privileges"); it writes nothing.
NODE_AGENT_RULES: Final = (
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [contract.GROUP], "resources": [contract.PLURAL], "verbs": ["get"]},
)

_KIND_PLURALS: Final = {"ServiceAccount": "serviceaccounts", "ClusterRole": "clusterroles",
                        "ClusterRoleBinding": "clusterrolebindings", "Role": "roles", "RoleBinding": "rolebindings"}


def _define(text: str, name: str) -> str:
    start = re.search(r'\{\{-? define "' + re.escape(name) + r'" -?\}\}', text)
    if start is None:
        raise ValueError(f"the chart defines no {name!r}")
    # Cluster-wide install: blocks under `if .Values.watchNamespaces` are left out; then the define's own end.
    rest = re.sub(r"\{\{-? if \.Values\.watchNamespaces -?\}\}.*?\{\{-? end -?\}\}", "", text[start.end():],
                  flags=re.DOTALL)
    body = re.split(r"\{\{-? end -?\}\}", rest, maxsplit=1)[0]
    if "{{" in body:
        raise ValueError(f"{name!r} holds template code this reader does not handle")
    return body


def chart_rules(chart_dir: pathlib.Path = CHART_DIR, *, kueue: bool = False) -> list[Json]:
    """The rules of the chart's ClusterRole for a cluster-wide install (``watchNamespaces`` empty).

    ``kueue``: with ``kueue.enabled`` (the operator as Kueue's integration, docs/kueue.md).
    """
    text = (chart_dir / "templates" / "_helpers.tpl").read_text()
    rules: list[Json] = []
    names = ["etj.rbac.clusterRules", "etj.rbac.namespacedRules"]
    if kueue:
        names += ["etj.rbac.kueueClusterRules", "etj.rbac.kueueNamespacedRules"]
    for define in names:
        rules += yaml.safe_load(_define(text, define)) or []
    return rules


def chart_rbac_objects(chart_dir: pathlib.Path = CHART_DIR, *, namespace: str = OPERATOR_NAMESPACE,
                       name: str = OPERATOR_NAME, kueue: bool = False) -> list[Json]:
    """The ServiceAccount, ClusterRole and ClusterRoleBinding a default ``helm install`` creates.

    ``kueue``: as with ``kueue.enabled``.
    """
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": chart_rules(chart_dir, kueue=kueue)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
    ]


def node_agent_rbac_objects(*, namespace: str = OPERATOR_NAMESPACE, name: str = NODE_AGENT_NAME) -> list[Json]:
    """The node agent's ServiceAccount, ClusterRole (:data:`NODE_AGENT_RULES`) and ClusterRoleBinding."""
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": [dict(rule) for rule in NODE_AGENT_RULES]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
    ]


def install_operator_identity(server: EmulatorServer, objects: Iterable[Mapping[str, Any]]) -> str:
    """Create (or replace) the RBAC objects and the ServiceAccount; return a token of that ServiceAccount.

    ``objects`` may hold other kinds (a rendered chart): only ServiceAccounts and RBAC objects are loaded.
    The token is the operator's: the ServiceAccount its Deployment runs as, when the objects hold the
    Deployment (a rendered chart, which may also hold the node agent's binding), else the first ServiceAccount
    a ClusterRoleBinding names.
    """
    objects = list(objects)
    operator_account: str | None = None
    for obj in objects:
        if obj.get("kind") == "Deployment":
            pod_spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
            operator_account = pod_spec.get("serviceAccountName") or operator_account
    account: tuple[str, str] | None = None
    for obj in objects:
        plural = _KIND_PLURALS.get(str(obj.get("kind")))
        if plural is None:
            continue
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace")
        existing = server.get(plural, namespace, meta["name"])
        if existing is None:
            server.create(plural, obj, namespace=namespace)
        else:
            server.replace(plural, namespace, meta["name"], {**obj, "metadata": existing["metadata"]})
        if plural == "clusterrolebindings" and account is None:
            for subject in obj.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount" and operator_account in (None, subject.get("name")):
                    account = (subject["namespace"], subject["name"])
    if account is None:
        raise ValueError("no ClusterRoleBinding names the operator's ServiceAccount")
    if server.get("serviceaccounts", account[0], account[1]) is None:
        server.create("serviceaccounts", {"metadata": {"name": account[1]}}, namespace=account[0])
    return server.service_account_token(*account)


def pod_kubeconfig(server_url: str, token: str | None, namespace: str, path: pathlib.Path) -> pathlib.Path:
    """Write a pod's kubeconfig (its ServiceAccount's token; none: anonymous) and return its path."""
    user: Json = {"token": token} if token else {}
    config = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "sandbox", "cluster": {"server": server_url}}],
        "users": [{"name": "pod", "user": user}],
        "contexts": [{"name": "pod", "context": {"cluster": "sandbox", "user": "pod", "namespace": namespace}}],
        "current-context": "pod",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
