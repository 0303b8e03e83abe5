"""A new pod comes back with what a real API server adds: defaults, the token volume, default tolerations."""

from __future__ import annotations

from etj_operator.sandbox.emulator import EmulatorServer
from etj_operator.sandbox.emulator.defaults import SERVICE_ACCOUNT_MOUNT_PATH, default_pod_spec


def test_defaults_tolerations_requests_and_the_token_volume():
    spec = {"containers": [
        {"name": "trainer", "image": "train:1.2", "resources": {"limits": {"nvidia.com/gpu": 1, "cpu": "2"}},
         "ports": [{"containerPort": 29500}]},
        {"name": "sidecar", "image": "busybox",
         "volumeMounts": [{"name": "own", "mountPath": SERVICE_ACCOUNT_MOUNT_PATH}]},
    ], "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}]}
    default_pod_spec(spec)
    trainer, sidecar = spec["containers"]
    assert trainer["resources"]["requests"] == {"nvidia.com/gpu": 1, "cpu": "2"}
    assert trainer["imagePullPolicy"] == "IfNotPresent" and sidecar["imagePullPolicy"] == "Always"
    assert trainer["ports"][0]["protocol"] == "TCP"
    assert trainer["terminationMessagePath"] == "/dev/termination-log"
    assert [t["key"] for t in spec["tolerations"]] == ["node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"]
    assert spec["tolerations"][1]["tolerationSeconds"] == 300
    [volume] = spec["volumes"]
    assert volume["name"].startswith("kube-api-access-")
    sources = volume["projected"]["sources"]
    assert sources[0]["serviceAccountToken"]["path"] == "token"
    mount = {"name": volume["name"], "mountPath": SERVICE_ACCOUNT_MOUNT_PATH, "readOnly": True}
    assert mount in trainer["volumeMounts"]
    assert [m["name"] for m in sidecar["volumeMounts"]] == ["own"]  # it mounts its own there: left alone
    assert spec["serviceAccountName"] == spec["serviceAccount"] == "default"
    assert (spec["dnsPolicy"], spec["enableServiceLinks"], spec["priority"]) == ("ClusterFirst", True, 0)


def test_no_token_volume_without_automount():
    spec = {"automountServiceAccountToken": False, "containers": [{"name": "trainer", "image": "x:1"}]}
    default_pod_spec(spec)
    assert "volumes" not in spec and "volumeMounts" not in spec["containers"][0]


def test_the_server_adds_them_on_create_and_computes_qos_after():
    with EmulatorServer() as server:
        pod = server.create("pods", {"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "trainer", "image": "x:1", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}},
            namespace="default")
    assert pod["spec"]["volumes"][0]["name"].startswith("kube-api-access-")
    assert pod["status"]["qosClass"] == "Guaranteed"  # requests copied from limits first
