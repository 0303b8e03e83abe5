"""The node agent's DaemonSet in the chart (nodeAgent.*): off by default, valid when on, the privileges it needs and
no more, the `etj node-agent` command's own flags, and RBAC that is exactly the agent's two reads, checked both
ways against the API emulator with RBAC enforced (as tests/chart/test_rbac.py does for the operator)."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import kubernetes_validate
import pytest
from chart_support import KUBE_VERSIONS, NAMESPACE, PROFILES, RELEASE_REGISTRY, find, kinds, render, rules_of

from etj_contract import agent as a
from etj_operator import __version__
from etj_operator import contract as c
from etj_operator.config import OperatorConfig
from etj_operator.errors import ApiStatusError
from etj_operator.kubeapi import RESOURCES, KubeApi, load_connection
from etj_operator.nodeagent.kube import KubeClusterReader
from etj_operator.nodeagent.metrics import MetricsServer
from etj_operator.sandbox.identities import install_operator_identity

from emulated import RBAC_KINDS, rbac_server
from jobs import job_manifest

ON: dict[str, Any] = {"nodeAgent": {"enabled": True}}
AGENT = "etj-efficient-training-operator-node-agent"
OPERATOR = "etj-efficient-training-operator"
AGENT_USER = f"system:serviceaccount:{NAMESPACE}:{AGENT}"
#: What operator/etj_operator/nodeagent/kube.py does, and all the agent may do: (apiGroup, resource, verb).
AGENT_PERMISSIONS = {("", "pods", "list"), (c.GROUP, c.PLURAL, "get")}


def agent_objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [o for o in render(values if values is not None else ON) if AGENT in o["metadata"]["name"]]


def daemonset(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return find(render(values if values is not None else ON), "DaemonSet")


def pod_spec(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return daemonset(values)["spec"]["template"]["spec"]


def operator_env(values: dict[str, Any]) -> dict[str, str]:
    (container,) = find(render(values), "Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


# ----- on and off ---------------------------------------------------------------------------------------------


def test_off_by_default_and_the_operator_is_told():
    objects = render()
    assert "DaemonSet" not in kinds(objects)
    assert not [o for o in objects if AGENT in o["metadata"]["name"]]
    assert operator_env({})["ETJ_NODE_AGENT"] == "false"
    assert OperatorConfig.from_env(operator_env({})).node_agent is False


def test_on_it_adds_its_own_account_rbac_and_daemonset_and_tells_the_operator():
    assert sorted(o["kind"] for o in agent_objects()) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "ServiceAccount",
    ]
    env = operator_env(ON)
    assert env["ETJ_NODE_AGENT"] == "true" and OperatorConfig.from_env(env).node_agent is True
    # the operator's own objects do not change
    off = {(o["kind"], o["metadata"]["name"]): o for o in render() if AGENT not in o["metadata"]["name"]}
    on = {(o["kind"], o["metadata"]["name"]): o for o in render(ON) if AGENT not in o["metadata"]["name"]}
    assert on.keys() == off.keys()
    for key in on:
        if key != ("Deployment", OPERATOR):
            assert on[key] == off[key], key


def test_the_operator_flag_reads_true_or_1_and_refuses_other_words():
    assert OperatorConfig.from_env({"ETJ_NODE_AGENT": "1"}).node_agent is True
    assert OperatorConfig.from_env({"ETJ_NODE_AGENT": "True"}).node_agent is True
    assert OperatorConfig.from_env({"ETJ_NODE_AGENT": "0"}).node_agent is False
    assert OperatorConfig.from_env({}).node_agent is False
    with pytest.raises(ValueError, match="ETJ_NODE_AGENT"):
        OperatorConfig.from_env({"ETJ_NODE_AGENT": "yes please"})


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize(
    "values", [ON, PROFILES["node-agent"], PROFILES["all-features"]], ids=["on", "node-agent", "all-features"]
)
def test_the_agents_objects_validate_against_kubernetes(values, version):
    objects = agent_objects(values)
    assert "DaemonSet" in kinds(objects)
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # no schema; test_chart.py checks the fields by hand
        kubernetes_validate.validate(obj, version, strict=True)


# ----- the pods: where, how, with which privileges -------------------------------------------------------------


def test_its_pods_are_not_the_operators_and_no_operator_selector_picks_them():
    objects = render(ON)
    agent_labels = daemonset()["spec"]["template"]["metadata"]["labels"]
    operator = find(objects, "Deployment")
    operator_labels = operator["spec"]["template"]["metadata"]["labels"]
    selectors = [operator["spec"]["selector"]["matchLabels"], find(objects, "Service")["spec"]["selector"]]
    for selector in selectors:
        assert not selector.items() <= agent_labels.items(), selector
    assert not daemonset()["spec"]["selector"]["matchLabels"].items() <= operator_labels.items()
    assert daemonset()["spec"]["selector"]["matchLabels"].items() <= agent_labels.items()
    assert agent_labels["app.kubernetes.io/component"] == "node-agent"


def test_it_runs_on_gpu_nodes_next_to_nvidias_daemonsets():
    spec = pod_spec()
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}  # the GPU Operator's label
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["runtimeClassName"] == "nvidia"
    assert "runtimeClassName" not in pod_spec({"nodeAgent": {"enabled": True, "runtimeClassName": ""}})
    (container,) = spec["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"  # every GPU, none allocated
    assert env["NVIDIA_DRIVER_CAPABILITIES"]["value"] == "utility"  # NVML
    assert env[a.ENV_NODE_NAME]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "nvidia.com/gpu" not in str(container.get("resources"))  # it holds no GPU itself


def test_root_with_sys_admin_and_nothing_more():
    spec = pod_spec()
    assert not any(spec.get(f) for f in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"))
    assert spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["runAsUser"] == 0 and security["runAsNonRoot"] is False  # NVML's set-limit call needs root
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # from the host: the kubelet's PodResources directory, read-only, and nothing else
    host = [v for v in spec["volumes"] if "hostPath" in v]
    assert host == [
        {"name": "pod-resources", "hostPath": {"path": "/var/lib/kubelet/pod-resources", "type": "Directory"}}
    ]
    assert all(set(v) == {"name", "emptyDir"} for v in spec["volumes"] if "hostPath" not in v)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["pod-resources"] == {
        "name": "pod-resources",
        "mountPath": "/var/lib/kubelet/pod-resources",
        "readOnly": True,
    }


def test_the_token_goes_to_the_agents_pods_only():
    objects = agent_objects()
    account = find(objects, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    spec = pod_spec()
    assert spec["serviceAccountName"] == account["metadata"]["name"] == AGENT != OPERATOR
    assert spec["automountServiceAccountToken"] is True  # it reads the API


def test_the_chart_arguments_are_the_commands_flags_and_agree_with_the_pod():
    from etj_operator.cli import build_parser

    values = {
        "nodeAgent": {
            "enabled": True,
            "intervalSeconds": 5,
            "graceSeconds": 60,
            "verbose": True,
            "gpuResources": ["nvidia.com/gpu", "nvidia.com/gpu.shared"],
            "keepLimitsOnExit": True,
            "podResourcesPath": "/var/snap/microk8s/common/var/lib/kubelet/pod-resources/",
            "metrics": {"port": 9501},
        }
    }
    for spec, expect in ((pod_spec(), {}), (pod_spec(values), values["nodeAgent"])):
        (container,) = spec["containers"]
        args = build_parser().parse_args(container["args"])
        assert args.command == "node-agent" and args.backend == "nvml"
        assert args.node is None  # from $NODE_NAME (the downward API)
        assert args.interval == expect.get("intervalSeconds", 10) and args.grace == expect.get("graceSeconds", 120)
        assert args.verbose is expect.get("verbose", False)
        assert args.keep_limits_on_exit is expect.get("keepLimitsOnExit", False)
        assert args.resource == (expect.get("gpuResources") or None)
        port = expect.get("metrics", {}).get("port", a.DEFAULT_AGENT_METRICS_PORT)
        assert args.metrics_port == port
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "pod-resources")
        assert args.pod_resources_socket == f"{mount['mountPath']}/kubelet.sock"
        if not expect:
            assert args.pod_resources_socket == a.DEFAULT_POD_RESOURCES_SOCKET
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == "metrics"


def test_the_probes_ask_for_what_the_agents_server_answers():
    (container,) = pod_spec()["containers"]
    paths = [container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")]
    for healthy, status in ((True, 200), (False, 503)):
        server = MetricsServer(lambda: "", lambda healthy=healthy: healthy, 0, "127.0.0.1")
        server.start()
        try:
            for path in paths:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as answer:
                        got = answer.status
                except urllib.error.HTTPError as e:
                    got = e.code
                assert got == status, (path, healthy)
        finally:
            server.stop()


def test_image_defaults_to_the_operators():
    (container,) = pod_spec()["containers"]
    assert container["image"] == f"{RELEASE_REGISTRY}/efficient-training-operator:{__version__}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    (pinned,) = pod_spec(PROFILES["all-features"])["containers"]
    assert pinned["image"] == "registry.example.com/ml-platform/etj-operator@sha256:" + "0" * 64
    own = {
        "nodeAgent": {
            "enabled": True,
            "image": {"repository": "reg.example/agent", "tag": "1.2", "pullPolicy": "Always"},
        }
    }
    (other,) = pod_spec({**own, "image": {"repository": "reg.example/op", "tag": "9"}})["containers"]
    assert other["image"] == "reg.example/agent:1.2" and other["imagePullPolicy"] == "Always"
    (tagged,) = pod_spec({"image": {"repository": "reg.example/op", "tag": "9"}, **ON})["containers"]
    assert tagged["image"] == "reg.example/op:9"


def test_the_pod_monitor_scrapes_the_agents_with_their_own_labels():
    assert "PodMonitor" not in kinds(agent_objects())
    monitor = find(agent_objects(PROFILES["node-agent"]), "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == daemonset()["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True  # the holder's namespace/pod labels, as dcgm-exporter's
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"nodeAgent": {"enable": True}}, "enable"),
        ({"nodeAgent": {"enabled": True, "intervalSeconds": 0}}, "intervalSeconds"),
        ({"nodeAgent": {"podResourcesPath": "var/lib/kubelet"}}, "podResourcesPath"),
        ({"nodeAgent": {"metrics": {"port": 70000}}}, "port"),
    ],
)
def test_values_schema_rejects_bad_agent_values(values, complaint):
    import helm_python as helm
    from chart_support import CHART

    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match=complaint):
        chart.validate_schema(chart.merge_values(values))


# ----- RBAC: exactly the agent's two reads -----------------------------------------------------------------------


def granted(objects: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for _, rule in rules_of(objects, "ClusterRole")
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


@pytest.mark.parametrize("profile", ["node-agent", "all-features"])
def test_the_agents_cluster_role_is_exactly_its_two_reads(profile):
    objects = agent_objects(PROFILES[profile])
    assert granted(objects) == AGENT_PERMISSIONS
    for _, rule in rules_of(objects, "ClusterRole"):
        assert set(rule) == {"apiGroups", "resources", "verbs"}  # no resourceNames, no nonResourceURLs
    assert "Role" not in kinds(objects) and "RoleBinding" not in kinds(objects)
    binding = find(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AGENT}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": AGENT, "namespace": NAMESPACE}]
    # and the operator's RBAC does not change with it
    assert granted([o for o in render(PROFILES[profile]) if o["metadata"]["name"] != AGENT]) == granted(
        [o for o in render({**PROFILES[profile], "nodeAgent": {"enabled": False}})]
    )


NODE = "gpu-node-a"


def _seed(server) -> tuple[str, str]:
    """A job with one pod bound to NODE and one elsewhere; the job's UID and name."""
    job = server.create(
        c.PLURAL,
        job_manifest("capped", namespace="ml", replicas=1) | {"metadata": {"name": "capped", "namespace": "ml"}},
        namespace="ml",
    )
    uid = job["metadata"]["uid"]
    owner = {"apiVersion": c.API_VERSION, "kind": c.KIND, "name": "capped", "uid": uid, "controller": True}
    for name, node in (("capped-worker-0", NODE), ("capped-worker-1", "gpu-node-b")):
        server.create(
            "pods",
            {
                "metadata": {"name": name, "namespace": "ml", "ownerReferences": [owner]},
                "spec": {"containers": [{"name": "trainer", "image": "x"}]},
            },
            namespace="ml",
        )
        server.bind_pod("ml", name, node)
    return uid, "capped"


def _agent_reads(server, kubeconfig) -> tuple[list[Any], Any]:
    async def main():
        api = KubeApi(load_connection(str(kubeconfig)), timeout_seconds=5)
        try:
            reader = KubeClusterReader(api)
            pods = await reader.pods_on_node(NODE)
            job = await reader.job("ml", pods[0].job_name, pods[0].job_uid) if pods else None
            return pods, job
        finally:
            await api.aclose()

    return asyncio.run(main())


def _denied(server) -> set[tuple[str, str, str]]:
    return {(p.group, p.resource, p.verb) for p in server.access.checked(AGENT_USER) if not p.allowed}


def test_the_agents_rbac_allows_exactly_what_its_reader_does(tmp_path):
    objects = [o for o in agent_objects() if o["kind"] in RBAC_KINDS]
    with rbac_server() as server:
        uid, _ = _seed(server)
        token = install_operator_identity(server, objects)
        kubeconfig = server.write_kubeconfig(tmp_path / "agent", token=token)
        server.access.clear_checked()
        pods, job = _agent_reads(server, kubeconfig)
        assert [(p.name, p.job_uid) for p in pods] == [("capped-worker-0", uid)]
        assert job is not None and job["metadata"]["uid"] == uid
        checked = server.access.checked(AGENT_USER)
        assert checked and all(p.allowed for p in checked), _denied(server)
        used = {(p.group, p.resource, p.verb) for p in checked}
        assert used == granted(objects) == AGENT_PERMISSIONS  # both ways: every grant used, every use granted

        # and nothing else: the token reads no pod by name, lists no job, no node, reads no ServiceAccount
        async def others():
            api = KubeApi(load_connection(str(kubeconfig)), timeout_seconds=5)
            refused = []
            try:
                for verb, kind, namespace, object_name in (
                    ("get", "Pod", "ml", "capped-worker-0"),
                    ("list", c.KIND, "ml", None),
                    ("list", "Node", None, None),
                    ("get", "ServiceAccount", NAMESPACE, AGENT),
                ):
                    res = RESOURCES[kind]
                    try:
                        await api.request(verb, "GET", res.plural, res.path(namespace, object_name), kind=kind)
                    except ApiStatusError as e:
                        refused.append((kind, getattr(e, "status", None)))
            finally:
                await api.aclose()
            return refused

        refused = asyncio.run(others())
        assert [kind for kind, _ in refused] == ["Pod", c.KIND, "Node", "ServiceAccount"], refused
        assert {
            ("", "pods", "get"),
            (c.GROUP, c.PLURAL, "list"),
            ("", "nodes", "list"),
            ("", "serviceaccounts", "get"),
        } <= _denied(server)


@pytest.mark.parametrize("removed", sorted(AGENT_PERMISSIONS))
def test_every_verb_of_the_agents_rbac_is_needed(removed, tmp_path):
    objects = []
    for obj in (o for o in agent_objects() if o["kind"] in RBAC_KINDS):
        if obj["kind"] == "ClusterRole":
            rules = [
                {"apiGroups": [g], "resources": [r], "verbs": [v]}
                for g, r, v in sorted(AGENT_PERMISSIONS)
                if (g, r, v) != removed
            ]
            obj = {**obj, "rules": rules}
        objects.append(obj)
    with rbac_server() as server:
        _seed(server)
        kubeconfig = server.write_kubeconfig(tmp_path / "agent", token=install_operator_identity(server, objects))
        with pytest.raises(ApiStatusError):
            _agent_reads(server, kubeconfig)
        assert removed in _denied(server)
