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


# ----- graceful termination on a fake clock: no background thread, one sync() at a time ------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """The emulator as the kubelet's PodApi, recording the kubelet's writes in order."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.calls: list[tuple] = []

    def list(self, *args, **kwargs):
        return self.server.list(*args, **kwargs)

    def set_pod_phase(self, namespace, name, phase, **kwargs):
        self.calls.append(("phase", name, phase, kwargs.get("exit_code")))
        return self.server.set_pod_phase(namespace, name, phase, **kwargs)

    def bind_pod(self, namespace, name, node):
        self.calls.append(("bind", name, node))
        return self.server.bind_pod(namespace, name, node)

    def delete_pod(self, namespace, name, **kwargs):
        self.calls.append(("delete", name, kwargs.get("grace_period_seconds"), kwargs.get("uid")))
        return self.server.delete_pod(namespace, name, **kwargs)


@pytest.fixture
def manual(server, tmp_path, monkeypatch):
    """A kubelet driven by hand: (kubelet, clock, recorder, signals sent as (signal, pod tag) pairs)."""
    import etj_operator.sandbox.kubelet as kubelet_module

    signals: list[tuple[int, str]] = []
    real_signal_all = kubelet_module._signal_all

    def recording_signal_all(pids, sig):
        tags = {kubelet_module._environ(pid).get(b"ETJ_SANDBOX_POD", b"").decode() for pid in pids}
        signals.extend((sig, tag) for tag in sorted(tags))
        real_signal_all(pids, sig)

    monkeypatch.setattr(kubelet_module, "_signal_all", recording_signal_all)
    clock, recorder = FakeClock(), Recorder(server)
    k = ProcessKubelet(recorder, KubeletConfig(state_dir=tmp_path / "state", kubeconfig=server.write_kubeconfig(
        tmp_path / "kubeconfig"), max_grace_seconds=60), clock=clock)
    yield k, clock, recorder, signals
    k.stop(grace_seconds=1)
    assert tagged_processes(tmp_path / "state") == []


IGNORES_SIGTERM = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                   "print('ready', flush=True)\ntime.sleep(120)")


def sync_until(kubelet, predicate, what, tries=600):
    """Sync (the fake clock stands still) until ``predicate()``; waits for processes, never asserts on time."""
    import time

    for _ in range(tries):
        kubelet.sync()
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def start(server, kubelet, body):
    name = body["metadata"]["name"]
    server.create("pods", body, namespace=NS)
    sync_until(kubelet, lambda: "ready" in kubelet.read_log(NS, name), f"{name} ready")
    return server.get("pods", NS, name)


def test_the_kubelet_binds_what_it_runs_and_honours_the_grace_period(server, manual):
    kubelet, clock, recorder, signals = manual
    running = start(server, kubelet, pod("slow", IGNORES_SIGTERM, grace=30))
    assert running["spec"]["nodeName"] == "sandbox" and ("bind", "slow", "sandbox") in recorder.calls
    tag = f"{NS}/slow/{running['metadata']['uid']}"

    server.delete_pod(NS, "slow")  # bound: Terminating for 30 s
    kubelet.sync()
    assert signals == [(15, tag)]  # SIGTERM at once
    clock.now += 29.9
    kubelet.sync()
    assert signals == [(15, tag)]  # the trainer ignores it; no SIGKILL before the deadline
    assert server.get("pods", NS, "slow")["metadata"]["deletionTimestamp"]  # still Terminating
    assert not any(c[0] == "delete" for c in recorder.calls)
    clock.now += 0.2
    kubelet.sync()
    assert signals == [(15, tag), (9, tag)]
    sync_until(kubelet, lambda: server.get("pods", NS, "slow") is None, "the pod removed")
    # report first, then remove with grace 0 and the pod's own UID (a newer pod of the name is left alone)
    assert recorder.calls[-2:] == [("phase", "slow", "Failed", 137),
                                   ("delete", "slow", 0, running["metadata"]["uid"])]


def test_a_shorter_grace_period_brings_the_sigkill_forward(server, manual):
    kubelet, clock, _, signals = manual
    running = start(server, kubelet, pod("hurried", IGNORES_SIGTERM, grace=30))
    tag = f"{NS}/hurried/{running['metadata']['uid']}"
    server.delete_pod(NS, "hurried")
    kubelet.sync()
    clock.now += 5
    server.delete_pod(NS, "hurried", grace_period_seconds=8)  # kubectl delete --grace-period=8, 5 s later
    kubelet.sync()
    assert signals == [(15, tag)]
    clock.now += 3.1  # 8.1 s after the SIGTERM: past the shortened deadline, far from the first one
    kubelet.sync()
    assert signals == [(15, tag), (9, tag)]
    sync_until(kubelet, lambda: server.get("pods", NS, "hurried") is None, "the pod removed")


def test_a_terminating_master_is_never_the_answer_to_its_name(server, manual):
    kubelet, clock, _, _ = manual
    master = dict(hostname="job-worker-0", subdomain="job", ports={"rendezvous": 29500}, grace=30)
    old = start(server, kubelet, pod("job-worker-0", IGNORES_SIGTERM, **master))
    old_ip = old["status"]["podIP"]
    server.delete_pod(NS, "job-worker-0")  # the gang restarts: the old master terminates slowly
    kubelet.sync()
    peer_code = "import os; print('master at', os.environ['MASTER_ADDR'], flush=True)"
    server.create("pods", pod("job-worker-1", peer_code, hostname="job-worker-1", subdomain="job",
                              env={"MASTER_ADDR": "job-worker-0.job.default.svc"}), namespace=NS)
    for _ in range(3):
        kubelet.sync()
    peer = server.get("pods", NS, "job-worker-1")
    assert peer["status"]["phase"] == "Pending" and "podIP" not in peer["status"]  # waits: no live master
    assert "master at" not in kubelet.read_log(NS, "job-worker-1")

    clock.now += 31  # the old master's grace runs out; it is killed and removed
    sync_until(kubelet, lambda: server.get("pods", NS, "job-worker-0") is None, "the old master removed")
    new = start(server, kubelet, pod("job-worker-0", IGNORES_SIGTERM, **master))
    sync_until(kubelet, lambda: "master at" in kubelet.read_log(NS, "job-worker-1"), "the peer started")
    seen = kubelet.read_log(NS, "job-worker-1").split("master at ")[-1].split()[0]
    assert seen == new["status"]["podIP"] != old_ip


def test_a_pod_deleted_before_it_started_is_removed_at_once(server, manual):
    kubelet, _, recorder, signals = manual
    # its peer never comes, so it waits for an address and has no process
    server.create("pods", pod("waiting", "print('never')", hostname="w", subdomain="lonely",
                              env={"MASTER_ADDR": "nobody.lonely.default.svc"}), namespace=NS)
    kubelet.sync()
    uid = server.get("pods", NS, "waiting")["metadata"]["uid"]
    server.delete_pod(NS, "waiting")
    kubelet.sync()
    assert server.get("pods", NS, "waiting") is None
    assert signals == [] and ("delete", "waiting", 0, uid) in recorder.calls


def test_the_projected_token_volume_holds_the_pods_token_and_namespace(server, tmp_path):
    """The API server adds kube-api-access-* to every pod; the kubelet fills it as a node's kubelet does."""
    server.create("serviceaccounts", {"metadata": {"name": "default"}}, namespace=NS)
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    issued = []

    def token(namespace: str, account: str) -> str:
        issued.append((namespace, account))
        return server.service_account_token(namespace, account)

    kubelet = ProcessKubelet(server, KubeletConfig(state_dir=tmp_path / "state", kubeconfig=kubeconfig,
                                                   max_grace_seconds=5, poll_seconds=0.05, pod_token=token))
    env = {"TOKEN_DIR": "/var/run/secrets/kubernetes.io/serviceaccount"}
    code = ("import os; d = os.environ['TOKEN_DIR']; print(open(os.path.join(d, 'namespace')).read());"
            " print(len(open(os.path.join(d, 'token')).read()) > 10)")
    kubelet.start()
    try:
        server.create("pods", pod("tok", code, env=env), namespace=NS)
        server.wait_for("pods", NS, "tok", phase_is("Succeeded"), timeout_seconds=30)
        assert kubelet.read_log(NS, "tok").splitlines()[-2:] == [NS, "True"]  # after the kubelet's header
        assert issued == [(NS, "default")]  # one token for the kubeconfig and the volume
    finally:
        kubelet.stop(grace_seconds=2)


# ----- the node's simulated GPUs: allocation by request, the PodResources socket, freeing -----------------


def gpu_pod(name: str, code: str, gpus: int, **kwargs) -> dict:
    body = pod(name, code, **kwargs)
    body["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    return body


@pytest.fixture
def gpu_kubelet(server, tmp_path):
    """A kubelet whose node has two simulated GPUs."""
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    k = ProcessKubelet(server, KubeletConfig(state_dir=tmp_path / "state", kubeconfig=kubeconfig,
                                             max_grace_seconds=5, poll_seconds=0.05, gpus=2))
    server.emulator.pod_log_reader = k.read_log
    k.start()
    yield k
    k.stop(grace_seconds=2)
    assert tagged_processes(tmp_path / "state") == []


def listed(kubelet) -> dict[tuple[str, str], tuple[str, ...]]:
    """What the node's PodResources socket answers: (pod, container) -> device ids."""
    from etj_operator.nodeagent.podresources import PodResourcesClient

    answer = PodResourcesClient(kubelet.pod_resources_socket, timeout_seconds=5).list()
    assert all(a.namespace == NS and a.resource == "nvidia.com/gpu" for a in answer)
    return {(a.pod, a.container): a.device_ids for a in answer}


def wait_until(predicate, what: str, seconds: float = 30) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


PRINT_GPU_ENV = ("import os, time; print(os.environ.get('NVIDIA_VISIBLE_DEVICES'),"
                 " os.environ.get('ETJ_SIMULATED_NODE_GPUS'), flush=True); print('ready', flush=True); time.sleep(60)")


def test_node_gpus_are_node_hardware_in_the_agents_simulated_format(gpu_kubelet, tmp_path):
    from etj_operator.nodeagent.gpus import SimulatedBackend, simulated_uuid

    assert gpu_kubelet.node_gpus_file == tmp_path / "state" / "nodes" / "sandbox" / "gpus.json"
    data = json.loads(gpu_kubelet.node_gpus_file.read_text())
    assert data["simulated"] is True and data["node"] == "sandbox"
    assert gpu_kubelet.gpu_uuids == (simulated_uuid("sandbox", 0), simulated_uuid("sandbox", 1))
    backend = SimulatedBackend(gpu_kubelet.node_dir, "sandbox")  # what `etj node-agent --backend simulated` opens
    assert [d.uuid for d in backend.inventory().devices] == list(gpu_kubelet.gpu_uuids)


def test_gpus_are_allocated_by_request_listed_on_the_socket_and_freed(server, gpu_kubelet):
    first, second = gpu_kubelet.gpu_uuids
    assert listed(gpu_kubelet) == {}
    server.create("pods", gpu_pod("one", PRINT_GPU_ENV, 1), namespace=NS)
    server.create("pods", pod("cpu-only", PRINT_GPU_ENV), namespace=NS)
    wait_until(lambda: "ready" in gpu_kubelet.read_log(NS, "one") and "ready" in gpu_kubelet.read_log(NS, "cpu-only"),
               "both pods running")
    visible, node_file = gpu_kubelet.read_log(NS, "one").splitlines()[-2].split()
    assert visible == first and node_file == str(gpu_kubelet.node_gpus_file)
    assert gpu_kubelet.read_log(NS, "cpu-only").splitlines()[-2] == "None None"  # no GPU asked, none visible
    assert listed(gpu_kubelet) == {("one", "trainer"): (first,)}

    # two GPUs asked, one free: not bound, Pending with the scheduler's reason
    server.create("pods", gpu_pod("two", PRINT_GPU_ENV, 2), namespace=NS)
    pending = server.wait_for("pods", NS, "two", lambda p: any(
        c.get("reason") == "Unschedulable" for c in (p or {}).get("status", {}).get("conditions") or []),
        timeout_seconds=30)
    [condition] = pending["status"]["conditions"]
    assert condition["type"] == "PodScheduled" and condition["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in condition["message"] and "1 free" in condition["message"]
    assert pending["status"]["phase"] == "Pending" and not pending["spec"].get("nodeName")
    assert listed(gpu_kubelet) == {("one", "trainer"): (first,)}

    # the first pod ends: its GPU is freed once its processes are gone, and the waiting pod gets both
    server.delete("pods", NS, "one")
    wait_until(lambda: "ready" in gpu_kubelet.read_log(NS, "two"), "the two-GPU pod running")
    assert server.get("pods", NS, "two")["spec"]["nodeName"] == "sandbox"
    assert listed(gpu_kubelet) == {("two", "trainer"): (first, second)}
    assert gpu_kubelet.read_log(NS, "two").splitlines()[-2].split()[0] == f"{first},{second}"
    assert gpu_kubelet.free_gpus() == ()


def test_a_sigkilled_pods_gpus_are_freed_when_its_processes_are_gone(server, gpu_kubelet, tmp_path):
    import os
    import signal

    server.create("pods", gpu_pod("victim", PRINT_GPU_ENV, 1), namespace=NS)
    wait_until(lambda: "ready" in gpu_kubelet.read_log(NS, "victim"), "the pod running")
    assert listed(gpu_kubelet) == {("victim", "trainer"): (gpu_kubelet.gpu_uuids[0],)}
    uid = server.get("pods", NS, "victim")["metadata"]["uid"]
    for pid in tagged_processes(tmp_path / "state", f"{NS}/victim/{uid}"):
        os.kill(pid, signal.SIGKILL)
    done = server.wait_for("pods", NS, "victim", phase_is("Failed"), timeout_seconds=30)
    assert terminated(done)["exitCode"] == 137
    wait_until(lambda: listed(gpu_kubelet) == {}, "the GPU off the PodResources answer")
    assert gpu_kubelet.free_gpus() == gpu_kubelet.gpu_uuids
