"""The sandbox kubelet: configMap volumes (a script shipped in a ConfigMap), GPU holders, the foreign example."""

from __future__ import annotations

import ast
import sys
import time
from pathlib import Path

import pytest
import yaml

from etj_operator.sandbox.emulator import EmulatorServer
from etj_operator.sandbox.kubelet import KubeletConfig, PodGpus, ProcessKubelet, tagged_processes

pytestmark = pytest.mark.timeout(120)

NS = "default"
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "workloads" / "examples"


@pytest.fixture
def server():
    with EmulatorServer() as srv:
        yield srv


@pytest.fixture
def kubelet(server, tmp_path):
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    k = ProcessKubelet(server, KubeletConfig(state_dir=tmp_path / "state", kubeconfig=kubeconfig, max_grace_seconds=5,
                                             poll_seconds=0.05, gpus=2, pod_resources=False))
    server.emulator.pod_log_reader = k.read_log
    k.start()
    yield k
    k.stop(grace_seconds=2)
    assert tagged_processes(tmp_path / "state") == []


def script_pod(name: str, volume: dict, *, gpus: int = 0) -> dict:
    container = {"name": "trainer", "image": "unused", "workingDir": "/workspace",
                 "command": [sys.executable, "main.py"],
                 "volumeMounts": [{"name": "code", "mountPath": "/workspace", "readOnly": True}]}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"restartPolicy": "Never", "containers": [container],
                     "volumes": [{"name": "code", "configMap": volume}]}}


def phase_is(*phases):
    return lambda p: bool(p) and (p.get("status") or {}).get("phase") in phases


def test_a_configmap_volume_holds_the_script_and_the_working_dir_is_the_mount(server, kubelet):
    code = "import pathlib; print('ran', pathlib.Path('data/answer.txt').read_text(), pathlib.Path.cwd().name)\n"
    server.create("configmaps", {"metadata": {"name": "code"},
                                 "data": {"main.py": code, "answer": "42", "ignored": "x"}}, namespace=NS)
    volume = {"name": "code", "items": [{"key": "main.py", "path": "main.py"},
                                        {"key": "answer", "path": "data/answer.txt"}]}
    server.create("pods", script_pod("runs", volume), namespace=NS)
    done = server.wait_for("pods", NS, "runs", phase_is("Succeeded", "Failed"), timeout_seconds=30)
    log = kubelet.read_log(NS, "runs")
    assert done["status"]["phase"] == "Succeeded", log
    assert log.splitlines()[-1] == "ran 42 code"  # cwd: the volume's directory (named after the volume)
    files = sorted(p.name for p in Path(log.splitlines()[0].rsplit("cwd ", 1)[1]).rglob("*") if p.is_file())
    assert files == ["answer.txt", "main.py"]


def test_a_pod_waits_pending_for_its_configmap(server, kubelet):
    server.create("pods", script_pod("waits", {"name": "late"}), namespace=NS)
    deadline = time.monotonic() + 30
    while not any(r.waiting_for == 'configmap "late" not found' for r in list(kubelet._runs.values())):
        assert time.monotonic() < deadline, "the kubelet did not notice the missing ConfigMap"
        time.sleep(0.05)
    pod = server.get("pods", NS, "waits")
    assert pod["spec"]["nodeName"] and (pod.get("status") or {}).get("phase", "Pending") == "Pending"
    assert kubelet.read_log(NS, "waits") == ""  # nothing started
    server.create("configmaps", {"metadata": {"name": "late"}, "data": {"main.py": "print('late but ran')\n"}},
                  namespace=NS)
    done = server.wait_for("pods", NS, "waits", phase_is("Succeeded", "Failed"), timeout_seconds=30)
    assert done["status"]["phase"] == "Succeeded"
    assert kubelet.read_log(NS, "waits").splitlines()[-1] == "late but ran"


def test_an_optional_configmap_may_be_missing(server, kubelet):
    pod = script_pod("optional", {"name": "absent", "optional": True})
    pod["spec"]["containers"][0]["command"] = [sys.executable, "-c", "import os; print(sorted(os.listdir('.')))"]
    server.create("pods", pod, namespace=NS)
    done = server.wait_for("pods", NS, "optional", phase_is("Succeeded", "Failed"), timeout_seconds=30)
    assert done["status"]["phase"] == "Succeeded"
    assert kubelet.read_log(NS, "optional").splitlines()[-1] == "[]"


def test_gpu_holders_name_each_pods_gpus_and_its_process_tag(server, kubelet):
    server.create("configmaps", {"metadata": {"name": "sleep"}, "data": {"main.py": "import time; time.sleep(60)\n"}},
                  namespace=NS)
    server.create("pods", script_pod("holder", {"name": "sleep"}, gpus=1), namespace=NS)
    running = server.wait_for("pods", NS, "holder", phase_is("Running"), timeout_seconds=30)
    [held] = kubelet.gpu_holders()
    assert held == PodGpus(NS, "holder", running["metadata"]["uid"], "trainer", (kubelet.gpu_uuids[0],))
    assert held.tag == f"{NS}/holder/{running['metadata']['uid']}"
    assert tagged_processes(kubelet.state_dir, held.tag)  # the tag finds the pod's processes
    server.delete("pods", NS, "holder")
    server.wait_for("pods", NS, "holder", lambda p: p is None, timeout_seconds=30)
    assert kubelet.gpu_holders() == []


def test_the_foreign_example_ships_its_script_unchanged_and_imports_nothing_of_the_project():
    script = (EXAMPLES / "foreign_ddp.py").read_text()
    docs = list(yaml.safe_load_all((EXAMPLES / "foreign-ddp.yaml").read_text()))
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap"]
    [job] = [d for d in docs if d["kind"] == "EfficientTrainingJob"]
    assert config_map["data"]["foreign_ddp.py"] == script  # the ConfigMap carries the file as it is
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(script))
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert not {m for m in imported if m.startswith("etj")}, imported
    spec = job["spec"]
    assert spec["energy"]["telemetry"]["source"] == "Prometheus"
    assert spec["energy"]["power"]["budgetWatts"] == 500
    assert spec["replicas"] == 2
    [container] = spec["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["command"][:2] == ["torchrun", "foreign_ddp.py"]
    [volume] = spec["template"]["spec"]["volumes"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
