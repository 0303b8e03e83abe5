"""The sandbox's node agent: `etj node-agent --backend simulated` drives the sandbox node's simulated GPUs.

A job's pod holds a node GPU; the agent caps exactly that GPU, the harness's simulated GPU in the pod runs at
the node's limit, and a pod SIGKILLed under the cap leaves the GPU capped until the agent's next cycle resets
it. No operator runs here (the job is created as a user would, and its pod by hand, owned by the job), so no
gang restart takes the GPU again. Nothing waits on wall time: every wait is for a condition, with a timeout.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
import yaml

from etj_contract import agent as a
from etj_contract import names as n
from etj_operator import contract as c
from etj_operator.nodeagent.podresources import PodResourcesClient
from etj_operator.sandbox.agents import NodeAgentProcess, node_gpu_limits
from etj_operator.sandbox.kubelet import tagged_processes
from etj_operator.sandbox.sandbox import REPO_ROOT, Sandbox, SandboxOptions

from emulated import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

NS = "default"
EXAMPLE = REPO_ROOT / "workloads" / "examples" / "digits-ddp.yaml"
#: The pod's program: the harness's simulated GPU, opened as the harness opens it, printing its limit in force.
FOLLOWER = """\
import time
from etj_workload.gpu import open_gpu
gpu = open_gpu("simulated")
last = None
while True:
    now = (gpu.uuid(), gpu.power_limit_mw())
    if now != last:
        print("limit", *now, flush=True)
        last = now
    time.sleep(0.05)
"""


def wait_for(predicate: Callable[[], object], what: str, seconds: float = 60) -> object:
    return wait_until(predicate, seconds, what)  # the tests' one poll loop (tests/emulated.py)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Iterator[Sandbox]:
    state = tmp_path_factory.mktemp("agent") / "state"
    options = SandboxOptions(state_dir=state, port=0, operator=False, gpus_per_node=2, max_grace_seconds=5,
                             node_agent_interval_seconds=0.3)
    with Sandbox(options) as sb:
        yield sb
    assert tagged_processes(state) == []  # the agent stopped with the sandbox


@pytest.fixture(scope="module")
def agent(sandbox: Sandbox) -> NodeAgentProcess:
    [node_agent] = sandbox.node_agents
    return node_agent


def fixed_job(sandbox: Sandbox, name: str, watts: int) -> dict:
    job = copy.deepcopy(next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d["kind"] == c.KIND))
    job["metadata"]["name"] = name
    del job["spec"]["compression"]
    job["spec"]["checkpoint"]["volume"] = {"emptyDir": {}}  # the example's claim is not created here
    job["spec"]["energy"]["power"] = {"mode": "Fixed", "limitWatts": watts}
    return sandbox.api.create(c.PLURAL, job, namespace=NS)


def job_pod(job: dict, name: str, code: str, gpus: int = 1) -> dict:
    """A pod as the operator makes one: controlled by the job (by UID), asking for GPUs."""
    meta = job["metadata"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": NS, "labels": {c.LABEL_JOB_NAME: meta["name"]},
        "ownerReferences": [{"apiVersion": f"{c.GROUP}/v1alpha1", "kind": c.KIND, "name": meta["name"],
                             "uid": meta["uid"], "controller": True}]},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5, "containers": [{
            "name": "trainer", "image": "unused", "command": [sys.executable, "-c", code],
            "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}}


def gpu_series(agent: NodeAgentProcess, uuid: str) -> tuple[float | None, str | None, int | None]:
    """(applied limit in W, the agent's reason, cycles) of one GPU, from one scrape of the agent's metrics."""
    limit = reason = cycles = None
    for s in agent.metrics():
        if s.name == a.METRIC_AGENT_CYCLES:
            cycles = int(s.value)
        elif s.labels.get(a.LABEL_UUID) != uuid:
            continue
        elif s.name == n.METRIC_POWER_MGMT_LIMIT:
            limit = s.value
        elif s.name == a.METRIC_AGENT_DESIRED_LIMIT:
            reason = s.labels.get(a.LABEL_REASON)
            assert s.labels.get(a.LABEL_SOURCE) == "simulated"
    return limit, reason, cycles


def pod_limits(sandbox: Sandbox, name: str) -> list[tuple[str, int]]:
    assert sandbox.kubelet is not None
    return [(words[1], int(words[2])) for line in sandbox.kubelet.read_log(NS, name).splitlines()
            if (words := line.split())[:1] == ["limit"]]


def test_the_agent_runs_as_its_own_read_only_service_account(sandbox: Sandbox, agent: NodeAgentProcess):
    config = yaml.safe_load(agent.kubeconfig.read_text())
    token = config["users"][0]["user"]["token"]
    url = sandbox.api.url

    def call(method: str, path: str, body: dict | None = None) -> int:
        request = urllib.request.Request(url + path, method=method, data=json.dumps(body).encode() if body else None,
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    assert call("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dsandbox") == 200
    assert call("POST", f"/api/v1/namespaces/{NS}/pods", job_pod({"metadata": {"name": "x", "uid": "u"}},
                                                                 "intruder", "pass")) == 403
    assert call("DELETE", f"/apis/{c.GROUP}/v1alpha1/namespaces/{NS}/{c.PLURAL}/nothing") == 403
    assert agent.proc is not None and agent.proc.poll() is None


def test_a_sigkilled_pod_leaves_its_gpu_capped_until_the_agents_next_cycle(sandbox: Sandbox,
                                                                            agent: NodeAgentProcess):
    kubelet = sandbox.kubelet
    assert kubelet is not None and kubelet.node_gpus_file is not None
    job = fixed_job(sandbox, "capped", 300)
    sandbox.api.create("pods", job_pod(job, "capped-worker-0", FOLLOWER), namespace=NS)
    sandbox.api.wait_for("pods", NS, "capped-worker-0",
                         lambda p: bool(p) and (p.get("status") or {}).get("phase") == "Running", timeout_seconds=60)
    [uuid] = kubelet.gpu_allocations()[(NS, "capped-worker-0")]["trainer"]
    socket = PodResourcesClient(kubelet.pod_resources_socket)
    assert [(x.pod, x.container, x.device_ids) for x in socket.list()] == [("capped-worker-0", "trainer", (uuid,))]

    # the agent applies the job's limit to exactly the pod's GPU; the pod's simulated GPU runs at it
    wait_for(lambda: gpu_series(agent, uuid)[:2] == (300.0, a.REASON_JOB_LIMIT), "the agent's 300 W cap")
    limits = node_gpu_limits(kubelet.node_gpus_file)
    assert limits[uuid] == (300_000, 700_000)
    assert all(limit == default for other, (limit, default) in limits.items() if other != uuid)
    wait_for(lambda: (uuid, 300_000) in pod_limits(sandbox, "capped-worker-0"), "the pod at the node's limit")
    assert pod_limits(sandbox, "capped-worker-0")[0][0] == uuid  # the node GPU's UUID, from NVIDIA_VISIBLE_DEVICES

    # SIGKILL the pod while the agent is held (SIGSTOP), so that what is left behind can be seen for sure
    assert agent.proc is not None
    os.kill(agent.proc.pid, signal.SIGSTOP)
    try:
        uid = sandbox.api.get("pods", NS, "capped-worker-0")["metadata"]["uid"]
        for pid in tagged_processes(sandbox.state_dir, f"{NS}/capped-worker-0/{uid}"):
            os.kill(pid, signal.SIGKILL)
        sandbox.api.wait_for("pods", NS, "capped-worker-0",
                             lambda p: bool(p) and p["status"].get("phase") == "Failed", timeout_seconds=30)
        wait_for(lambda: socket.list() == [], "the kubelet to free the GPU")
        assert node_gpu_limits(kubelet.node_gpus_file)[uuid][0] == 300_000  # the cap outlived the pod
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    first = wait_for(lambda: gpu_series(agent, uuid)[2], "the agent's metrics after SIGCONT")
    assert isinstance(first, int)

    def reset() -> tuple[float | None, str | None, int | None] | None:
        seen = gpu_series(agent, uuid)
        return seen if seen[0] == 700.0 else None

    _, reason, cycles = wait_for(reset, "the agent to reset the GPU")
    assert reason in (a.REASON_NOT_HELD, a.REASON_POD_FINISHED)
    # the cycle held at SIGSTOP may have read the kubelet before the kill; the one after it resets
    assert cycles is not None and cycles <= first + 2
    assert node_gpu_limits(kubelet.node_gpus_file)[uuid] == (700_000, 700_000)
    sandbox.api.delete(c.PLURAL, NS, "capped")


def test_without_the_agent_a_cap_left_behind_stays(tmp_path):
    """The contrast: node GPUs are hardware; with no agent nothing resets them (and the operator is not told)."""
    options = SandboxOptions(state_dir=tmp_path / "state", port=0, operator=False, gpus_per_node=1,
                             node_agent=False, max_grace_seconds=5)
    with Sandbox(options) as sandbox:
        assert sandbox.node_agents == []
        assert sandbox.kubelet is not None and sandbox.kubelet.node_gpus_file is not None
        from etj_operator.nodeagent.gpus import SimulatedBackend

        backend = SimulatedBackend(sandbox.kubelet.node_dir, "sandbox")  # someone caps the card and goes away
        [device] = backend.inventory().devices
        backend.set_limit(device, 250_000)
        job = fixed_job(sandbox, "lonely", 400)
        sandbox.api.create("pods", job_pod(job, "lonely-worker-0", FOLLOWER), namespace=NS)
        wait_for(lambda: (device.uuid, 250_000) in pod_limits(sandbox, "lonely-worker-0"),
                 "the pod bound by the cap left on its node GPU")
        assert sandbox.operator_settings(tmp_path / "k")["ETJ_NODE_AGENT"] == "0"


def test_the_operator_is_told_when_the_agent_runs(tmp_path):
    settings = Sandbox(SandboxOptions(state_dir=tmp_path)).operator_settings(tmp_path / "kubeconfig")
    assert settings["ETJ_NODE_AGENT"] == "1" and settings["KUBECONFIG"] == str(tmp_path / "kubeconfig")
    no_gpus = Sandbox(SandboxOptions(state_dir=tmp_path, gpus_per_node=0)).operator_settings(tmp_path / "k")
    assert no_gpus["ETJ_NODE_AGENT"] == "0"
