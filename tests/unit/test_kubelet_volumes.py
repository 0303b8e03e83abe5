"""The sandbox kubelet's volumes as a node's: hostPath is this machine's path, PVCs follow their claim, subPath,
and mount paths in the command's words.

This machine is the sandbox's one node, so a hostPath volume is the path itself (checked by its type, as a
kubelet checks it); a pod whose volume cannot be set up yet stays Pending until it can.
"""

from __future__ import annotations

import sys
import time

import pytest

from etj_operator.sandbox.emulator import EmulatorServer
from etj_operator.sandbox.kubelet import KubeletConfig, ProcessKubelet, tagged_processes

pytestmark = pytest.mark.timeout(120)

NS = "default"


@pytest.fixture
def server():
    with EmulatorServer() as srv:
        yield srv


@pytest.fixture
def kubelet(server, tmp_path):
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    k = ProcessKubelet(server, KubeletConfig(state_dir=tmp_path / "state", kubeconfig=kubeconfig, max_grace_seconds=5,
                                             poll_seconds=0.05, pod_resources=False))
    server.emulator.pod_log_reader = k.read_log
    k.start()
    yield k
    k.stop(grace_seconds=2)
    assert tagged_processes(tmp_path / "state") == []


def pod(name: str, command: list[str], volumes: list[dict], mounts: list[dict], workdir: str | None = None) -> dict:
    container = {"name": "trainer", "image": "unused", "command": command, "volumeMounts": mounts}
    if workdir:
        container["workingDir"] = workdir
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"restartPolicy": "Never", "containers": [container], "volumes": volumes}}


def finished(server, kubelet, name: str) -> str:
    done = server.wait_for("pods", NS, name, lambda p: bool(p) and (p.get("status") or {}).get("phase")
                           in ("Succeeded", "Failed"), timeout_seconds=60)
    log = kubelet.read_log(NS, name)
    assert done["status"]["phase"] == "Succeeded", log
    return log.splitlines()[-1]


def waiting(kubelet, message: str) -> None:
    deadline = time.monotonic() + 30
    while not any(r.waiting_for == message for r in list(kubelet._runs.values())):
        assert time.monotonic() < deadline, f"the kubelet did not report {message!r}"
        time.sleep(0.05)


def test_a_host_path_is_the_path_of_this_machine_and_the_commands_words_see_it(server, kubelet, tmp_path):
    project = tmp_path / "my-project"
    project.mkdir()
    (project / "train.py").write_text(
        "import pathlib, sys\n"
        "out = pathlib.Path(sys.argv[1].split('=', 1)[1])\n"
        "out.write_text('trained')\n"
        "print('ran from', pathlib.Path(__file__).parent.name, 'cwd', pathlib.Path.cwd().name)\n"
    )
    volumes = [{"name": "code", "hostPath": {"path": str(project), "type": "Directory"}}]
    mounts = [{"name": "code", "mountPath": "/workspace"}]
    command = [sys.executable, "/workspace/train.py", "--out=/workspace/model.txt"]
    server.create("pods", pod("host", command, volumes, mounts, workdir="/workspace"), namespace=NS)
    assert finished(server, kubelet, "host") == "ran from my-project cwd my-project"
    assert (project / "model.txt").read_text() == "trained"  # written through the mount, on this machine


def test_a_pod_waits_for_a_host_path_directory_that_does_not_exist_yet(server, kubelet, tmp_path):
    later = tmp_path / "later"
    volumes = [{"name": "data", "hostPath": {"path": str(later), "type": "Directory"}}]
    command = [sys.executable, "-c", "import os, sys; print(sorted(os.listdir(sys.argv[1])))", "/data"]
    server.create("pods", pod("waits", command, volumes, [{"name": "data", "mountPath": "/data"}]), namespace=NS)
    waiting(kubelet, f"hostPath type check failed: {later} is not a Directory")
    assert (server.get("pods", NS, "waits").get("status") or {}).get("phase", "Pending") == "Pending"
    later.mkdir()
    (later / "x").write_text("")
    assert finished(server, kubelet, "waits") == "['x']"


def test_host_path_types_create_what_they_say_and_a_sub_path_mounts_one_file(server, kubelet, tmp_path):
    made, config = tmp_path / "made" / "dir", tmp_path / "settings.txt"
    config.write_text("lr=0.1")
    volumes = [{"name": "made", "hostPath": {"path": str(made), "type": "DirectoryOrCreate"}},
               {"name": "cfg", "hostPath": {"path": str(tmp_path), "type": "Directory"}},
               {"name": "log", "hostPath": {"path": str(tmp_path / "run.log"), "type": "FileOrCreate"}}]
    mounts = [{"name": "made", "mountPath": "/out"}, {"name": "log", "mountPath": "/var/log/run.log"},
              {"name": "cfg", "mountPath": "/etc/app/settings.txt", "subPath": "settings.txt"}]
    command = [sys.executable, "-c", "import sys, pathlib; print(pathlib.Path(sys.argv[1]).read_text(),"
               " pathlib.Path(sys.argv[2]).is_dir(), pathlib.Path(sys.argv[3]).is_file())",
               "/etc/app/settings.txt", "/out", "/var/log/run.log"]
    server.create("pods", pod("types", command, volumes, mounts), namespace=NS)
    assert finished(server, kubelet, "types") == "lr=0.1 True True"
    assert made.is_dir() and (tmp_path / "run.log").is_file()


def test_a_claim_is_one_directory_per_claim_object_and_a_pod_waits_for_its_claim(server, kubelet):
    volumes = [{"name": "ckpt", "persistentVolumeClaim": {"claimName": "ckpt"}}]
    mounts = [{"name": "ckpt", "mountPath": "/ckpt"}]
    step = ("import os, pathlib; d = pathlib.Path(os.environ['D']); n = len(list(d.iterdir()));"
            " (d / f'ckpt-{n}').write_text(''); print(n)")

    def run(name: str) -> str:
        spec = pod(name, [sys.executable, "-c", step], volumes, mounts)
        spec["spec"]["containers"][0]["env"] = [{"name": "D", "value": "/ckpt"}]
        server.create("pods", spec, namespace=NS)
        return finished(server, kubelet, name)

    server.create("pods", pod("early", [sys.executable, "-c", "print('ran')"], volumes, mounts), namespace=NS)
    waiting(kubelet, 'persistentvolumeclaim "ckpt" not found')
    claim = {"metadata": {"name": "ckpt"}, "spec": {"accessModes": ["ReadWriteMany"],
                                                    "resources": {"requests": {"storage": "1Gi"}}}}
    server.create("persistentvolumeclaims", claim, namespace=NS)
    assert finished(server, kubelet, "early") == "ran"
    assert [run("first"), run("second")] == ["0", "1"]  # the second pod sees what the first one left
    server.delete("persistentvolumeclaims", NS, "ckpt")
    server.wait_for("persistentvolumeclaims", NS, "ckpt", lambda c: c is None, timeout_seconds=30)
    server.create("persistentvolumeclaims", claim, namespace=NS)
    assert run("third") == "0"  # a new claim object: a new, empty volume
