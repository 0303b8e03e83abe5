"""The sandbox's process kubelet against the API emulator, with small Python programs as containers."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest

from etj_operator.sandbox.emulator import EmulatorServer
from etj_operator.sandbox.kubelet import KubeletConfig, ProcessKubelet, expand_references, tagged_processes

pytestmark = pytest.mark.timeout(120)

NS = "default"
PY = sys.executable


def pod(name: str, code: str, *, env: dict[str, str] | None = None, ports: dict[str, int] | None = None,
        hostname: str | None = None, subdomain: str | None = None, grace: int | None = None,
        volumes: bool = False) -> dict:
    """A pod whose trainer runs ``python -c code``."""
    container: dict = {"name": "trainer", "image": "unused", "command": [PY, "-c", code],
                       "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}
    if ports:
        container["ports"] = [{"name": n, "containerPort": p} for n, p in ports.items()]
    spec: dict = {"containers": [container], "restartPolicy": "Never"}
    if hostname:
        spec["hostname"] = hostname
    if subdomain:
        spec["subdomain"] = subdomain
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    if volumes:
        spec["volumes"] = [{"name": "ckpt", "emptyDir": {}}]
        container["volumeMounts"] = [{"name": "ckpt", "mountPath": "/checkpoints"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS}, "spec": spec}


@pytest.fixture
def server():
    with EmulatorServer() as srv:
        yield srv


@pytest.fixture
def kubelet(server, tmp_path):
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    k = ProcessKubelet(server, KubeletConfig(state_dir=tmp_path / "state", kubeconfig=kubeconfig,
                                             max_grace_seconds=5, poll_seconds=0.05))
    server.emulator.pod_log_reader = k.read_log
    k.start()
    yield k
    k.stop(grace_seconds=2)
    assert tagged_processes(tmp_path / "state") == []


def phase_is(*phases):
    return lambda p: bool(p) and (p.get("status") or {}).get("phase") in phases


def terminated(p):
    return (p["status"]["containerStatuses"][0]["state"]).get("terminated") or {}


def test_runs_the_command_with_env_and_reports_success(server, kubelet):
    code = "import os, json; print(json.dumps({k: os.environ.get(k) for k in ('GREETING', 'KUBECONFIG', 'ETJ_GPU_BACKEND', 'HOSTNAME')}))"  # noqa: E501
    server.create("pods", pod("hello", code, env={"WHO": "world", "GREETING": "hi $(WHO)"}), namespace=NS)
    done = server.wait_for("pods", NS, "hello", phase_is("Succeeded", "Failed"), timeout_seconds=30)
    assert done["status"]["phase"] == "Succeeded"
    assert terminated(done)["exitCode"] == 0
    assert done["status"]["podIP"].startswith("127.")
    seen = json.loads(kubelet.read_log(NS, "hello").splitlines()[-1])
    assert seen["GREETING"] == "hi world"
    assert seen["KUBECONFIG"] and Path(seen["KUBECONFIG"]).exists()
    assert seen["ETJ_GPU_BACKEND"] == "simulated"
    assert seen["HOSTNAME"] == "hello"


def test_exit_code_makes_the_pod_failed(server, kubelet):
    server.create("pods", pod("bad", "import sys; sys.exit(3)"), namespace=NS)
    done = server.wait_for("pods", NS, "bad", phase_is("Succeeded", "Failed"), timeout_seconds=30)
    assert done["status"]["phase"] == "Failed"
    assert terminated(done)["exitCode"] == 3


def test_missing_executable_fails_the_pod_with_a_reason(server, kubelet):
    body = pod("noexe", "")
    body["spec"]["containers"][0]["command"] = ["no-such-program-here"]
    server.create("pods", body, namespace=NS)
    done = server.wait_for("pods", NS, "noexe", phase_is("Failed"), timeout_seconds=30)
    assert done["status"]["reason"] == "StartError"
    assert "executable file not found" in kubelet.read_log(NS, "noexe")


def test_service_names_resolve_to_pod_addresses_and_rendezvous_ports_are_remapped(server, kubelet):
    master = pod("job-worker-0", "import time; time.sleep(30)", hostname="job-worker-0", subdomain="job",
                 ports={"rendezvous": 29500, "metrics": 9400})
    peer_code = "import os; print(os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'], os.environ['RDZV'], os.environ['RATE'])"  # noqa: E501
    peer = pod("job-worker-1", peer_code, hostname="job-worker-1", subdomain="job",
               env={"MASTER_ADDR": "job-worker-0.job.default.svc", "MASTER_PORT": "29500",
                    "RDZV": "job-worker-0.job.default.svc.cluster.local:29500", "RATE": "0.5"},
               ports={"rendezvous": 29500})
    server.create("pods", peer, namespace=NS)  # the peer first: it waits for the master's address
    server.create("pods", master, namespace=NS)
    done = server.wait_for("pods", NS, "job-worker-1", phase_is("Succeeded", "Failed"), timeout_seconds=30)
    assert done["status"]["phase"] == "Succeeded"
    master_ip = server.get("pods", NS, "job-worker-0")["status"]["podIP"]
    assert master_ip != done["status"]["podIP"]
    addr, port, rdzv, rate = kubelet.read_log(NS, "job-worker-1").splitlines()[-1].split()
    assert addr == master_ip
    assert port.isdigit() and port != "29500"  # the master's own host port for its rendezvous
    assert rdzv == f"{master_ip}:{port}"
    assert rate == "0.5"  # not a service name


def test_pod_namespaces_shim_binds_wildcard_sockets_to_the_pod_address(server, kubelet):
    code = ("import socket; s = socket.socket(); s.bind(('0.0.0.0', 0)); "
            "print(s.getsockname()[0], socket.gethostname())")
    server.create("pods", pod("binder", code, hostname="binder-host"), namespace=NS)
    done = server.wait_for("pods", NS, "binder", phase_is("Succeeded", "Failed"), timeout_seconds=30)
    address, hostname = kubelet.read_log(NS, "binder").splitlines()[-1].split()
    assert address == done["status"]["podIP"]
    assert hostname == "binder-host"


def test_empty_dir_mount_paths_are_rewritten_to_a_host_directory(server, kubelet, tmp_path):
    code = "import os; p = os.environ['ETJ_CHECKPOINT_DIR']; open(os.path.join(p, 'x'), 'w').write('1'); print(p)"
    server.create("pods", pod("ckpt", code, env={"ETJ_CHECKPOINT_DIR": "/checkpoints"}, volumes=True), namespace=NS)
    server.wait_for("pods", NS, "ckpt", phase_is("Succeeded"), timeout_seconds=30)
    host_dir = Path(kubelet.read_log(NS, "ckpt").splitlines()[-1])
    assert host_dir.is_relative_to(tmp_path / "state")
    assert (host_dir / "x").read_text() == "1"


def test_deleting_a_pod_sends_sigterm_to_its_processes(server, kubelet, tmp_path):
    code = ("import signal, sys, time\n"
            "def stop(*_):\n    print('got SIGTERM', flush=True); sys.exit(143)\n"
            "signal.signal(signal.SIGTERM, stop)\nprint('ready', flush=True)\ntime.sleep(60)")
    server.create("pods", pod("sleeper", code), namespace=NS)
    server.wait_for("pods", NS, "sleeper", phase_is("Running"), timeout_seconds=30)
    server.wait_for("pods", NS, "sleeper", lambda _: "ready" in kubelet.read_log(NS, "sleeper"), timeout_seconds=30)
    uid = server.get("pods", NS, "sleeper")["metadata"]["uid"]
    server.delete("pods", NS, "sleeper")
    server.wait_for("pods", NS, "sleeper",
                    lambda _: not tagged_processes(tmp_path / "state", f"{NS}/sleeper/{uid}"), timeout_seconds=30)
    assert "got SIGTERM" in kubelet.read_log(NS, "sleeper")


def test_a_pod_that_ignores_sigterm_is_killed_after_its_grace_period(server, kubelet, tmp_path):
    code = ("import signal, subprocess, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            # a child in its own session, as torchrun starts its workers: still part of the pod
            "subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, "
            "signal.SIG_IGN); time.sleep(60)'], start_new_session=True)\n"
            "print('ready', flush=True)\ntime.sleep(60)")
    server.create("pods", pod("stubborn", code, grace=1), namespace=NS)
    server.wait_for("pods", NS, "stubborn", lambda _: "ready" in kubelet.read_log(NS, "stubborn"),
                    timeout_seconds=30)
    uid = server.get("pods", NS, "stubborn")["metadata"]["uid"]
    tag = f"{NS}/stubborn/{uid}"
    server.wait_for("pods", NS, "stubborn", lambda _: len(tagged_processes(tmp_path / "state", tag)) == 2,
                    timeout_seconds=30)
    server.delete("pods", NS, "stubborn")
    server.wait_for("pods", NS, "stubborn", lambda _: not tagged_processes(tmp_path / "state", tag),
                    timeout_seconds=30)


def test_pod_log_is_served_by_the_api(server, kubelet):
    server.create("pods", pod("talker", "print('hello from the pod')"), namespace=NS)
    server.wait_for("pods", NS, "talker", phase_is("Succeeded"), timeout_seconds=30)
    with urllib.request.urlopen(f"{server.url}/api/v1/namespaces/{NS}/pods/talker/log?container=trainer") as r:
        assert "hello from the pod" in r.read().decode()


def test_expand_references_follows_kubernetes_rules():
    env = {"A": "1"}
    assert expand_references("$(A)-$(B)-$$(A)", env) == "1-$(B)-$(A)"


def test_a_port_taken_on_every_address_fails_the_pod_with_a_reason(server, kubelet):
    import socket

    with socket.socket() as blocker:
        blocker.bind(("0.0.0.0", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server.create("pods", pod("blocked", "print('never')", ports={"metrics": port}), namespace=NS)
        done = server.wait_for("pods", NS, "blocked", phase_is("Failed"), timeout_seconds=30)
    assert done["status"]["reason"] == "AddressUnavailable"
    assert str(port) in kubelet.read_log(NS, "blocked")
