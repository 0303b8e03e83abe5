"""The node agent's loop with a fake clock, a fake API and kubelet, and simulated GPUs (node hardware)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from agentkit import NODE, NS, FakeAllocations, FakeClock, FakeCluster, holds, job, pod
from prometheus_client.parser import text_string_to_metric_families

from etj_contract import agent as a
from etj_contract import names as n
from etj_operator.nodeagent.agent import AgentSettings, NodeAgent
from etj_operator.nodeagent.gpus import SimulatedBackend, simulated_uuid
from etj_operator.nodeagent.podresources import PodResourcesClient, PodResourcesServer

INTERVAL = 10.0
GRACE = 60.0
GRACE_CYCLES = int(GRACE // INTERVAL)
U = [simulated_uuid(NODE, i) for i in range(4)]
DEFAULT = 700_000


class Recording:
    """A backend that records every set_limit (to count applies and retries)."""

    def __init__(self, inner: SimulatedBackend) -> None:
        self.inner = inner
        self.source = inner.source
        self.sets: list[tuple[str, int]] = []

    def inventory(self):
        return self.inner.inventory()

    def read_limit(self, device):
        return self.inner.read_limit(device)

    def set_limit(self, device, limit_mw):
        self.sets.append((device.uuid, limit_mw))
        self.inner.set_limit(device, limit_mw)

    def close(self):
        self.inner.close()


def make_agent(gpus, kubelet, cluster, clock, **settings) -> NodeAgent:
    options = {"interval_seconds": INTERVAL, "grace_seconds": GRACE, **settings}
    return NodeAgent(AgentSettings(node=NODE, **options), gpus, kubelet, cluster, clock)


def cycle(agent: NodeAgent, clock: FakeClock | None = None, advance: float = INTERVAL):
    snapshot = asyncio.run(agent.cycle())
    if clock is not None:
        clock.advance(advance)
    return snapshot


def run_until(agent: NodeAgent, cycles: int) -> None:
    """Run the agent's loop (the fake clock's wait moves time) and stop it after ``cycles`` cycles."""
    stop = asyncio.Event()
    original = agent.cycle

    async def counted():
        snapshot = await original()
        if snapshot.cycles >= cycles:
            stop.set()
        return snapshot

    agent.cycle = counted
    asyncio.run(agent.run(stop))


def limits(backend) -> list[int]:
    inner = backend.inner if isinstance(backend, Recording) else backend
    return [inner.read_limit(d).limit_mw for d in inner.inventory().devices]


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


@pytest.fixture
def rec(gpus) -> Recording:
    return Recording(gpus)


@pytest.fixture
def resnet(cluster: FakeCluster, kubelet: FakeAllocations):
    """Job resnet (Fixed 300 W) with two pods on this node: worker-0 holds GPU 0 and 1, worker-1 GPU 2."""
    owner = cluster.add_job(job("resnet", "uid-resnet", limit=300))
    cluster.add_pod(pod("resnet-worker-0", "pod-0", owner))
    cluster.add_pod(pod("resnet-worker-1", "pod-1", owner))
    kubelet.table = [holds("resnet-worker-0", U[0], U[1]), holds("resnet-worker-1", U[2])]
    return owner


def test_a_job_is_capped_on_its_gpus_only_and_nothing_is_set_twice(rec, kubelet, cluster, clock, resnet):
    agent = make_agent(rec, kubelet, cluster, clock)
    snapshot = cycle(agent, clock)
    assert limits(rec) == [300_000, 300_000, 300_000, DEFAULT]
    assert sorted(rec.sets) == sorted((u, 300_000) for u in U[:3])
    # the applied limits, DCGM-style, with the holding pod
    series = samples(agent.metrics_text, n.METRIC_POWER_MGMT_LIMIT)
    by_uuid = {labels[a.LABEL_UUID]: (labels, value) for labels, value in series}
    labels, value = by_uuid[U[0]]
    assert value == 300.0
    assert {k: labels[k] for k in (a.LABEL_POD, a.LABEL_NAMESPACE, a.LABEL_CONTAINER, a.LABEL_HOSTNAME)} == {
        a.LABEL_POD: "resnet-worker-0", a.LABEL_NAMESPACE: "ml", a.LABEL_CONTAINER: "trainer", a.LABEL_HOSTNAME: NODE}
    assert labels[a.LABEL_SOURCE] == "simulated" and labels[a.LABEL_GPU] == "0"
    assert a.LABEL_POD not in by_uuid[U[3]][0] and by_uuid[U[3]][1] == 700.0
    desired = {lb[a.LABEL_UUID]: (lb[a.LABEL_REASON], lb[a.LABEL_JOB_UID], v)
               for lb, v in samples(agent.metrics_text, a.METRIC_AGENT_DESIRED_LIMIT)}
    assert desired[U[2]] == (a.REASON_JOB_LIMIT, "uid-resnet", 300.0)
    assert desired[U[3]] == (a.REASON_NOT_HELD, "", 700.0)
    assert snapshot.cycles == 1
    # level-triggered without churn: the next cycles read back the same limits and set nothing
    cycle(agent, clock)
    cycle(agent, clock)
    assert len(rec.sets) == 3
    applies = {lb[a.LABEL_UUID]: v for lb, v in samples(agent.metrics_text, a.METRIC_AGENT_APPLIES)}
    assert applies == {U[0]: 1, U[1]: 1, U[2]: 1}


def test_a_sigkilled_worker_gets_its_gpu_back_at_default_within_one_cycle(gpus, kubelet, cluster, clock, resnet):
    agent = make_agent(gpus, kubelet, cluster, clock)
    cycle(agent, clock)
    assert limits(gpus)[2] == 300_000
    # SIGKILL: the container is gone, the kubelet no longer lists its devices (the pod object may linger)
    kubelet.table = [holds("resnet-worker-0", U[0], U[1])]
    cycle(agent, clock)
    assert limits(gpus) == [300_000, 300_000, DEFAULT, DEFAULT]
    assert agent.plan.by_uuid()[U[2]].reason == a.REASON_NOT_HELD


def test_an_agent_restarted_mid_job_reapplies_every_limit(node_dir, kubelet, cluster, clock, resnet):
    first = make_agent(SimulatedBackend(node_dir, NODE, count=4), kubelet, cluster, clock)
    cycle(first, clock)
    # the agent dies (no release); meanwhile the job's cap changes and something resets a GPU behind its back
    cluster.jobs[("ml", "resnet")]["status"][n.CONTROL] = {n.CONTROL_POWER_LIMIT_WATTS_PER_GPU: 250}
    hardware = SimulatedBackend(node_dir, NODE)
    hardware.set_limit(hardware.inventory().devices[1], DEFAULT)
    # ... and worker-1 was SIGKILLed while no agent ran: its GPU stays capped until an agent comes
    kubelet.table = [holds("resnet-worker-0", U[0], U[1])]
    assert limits(hardware)[2] == 300_000
    second = Recording(SimulatedBackend(node_dir, NODE))
    cycle(make_agent(second, kubelet, cluster, clock), clock)
    assert limits(second) == [250_000, 250_000, DEFAULT, DEFAULT]
    assert sorted(second.sets) == sorted([(U[0], 250_000), (U[1], 250_000), (U[2], DEFAULT)])


def test_a_job_deleted_mid_run_leaves_no_gpu_capped(gpus, kubelet, cluster, clock, resnet):
    agent = make_agent(gpus, kubelet, cluster, clock)
    cycle(agent, clock)
    del cluster.jobs[("ml", "resnet")]  # the pods are still there until the garbage collector removes them
    cycle(agent, clock)
    assert limits(gpus) == [DEFAULT] * 4
    assert {d.reason for d in agent.plan.decisions if d.holders} == {a.REASON_JOB_GONE}


def test_a_job_recreated_under_the_same_name_is_another_job(gpus, kubelet, cluster, clock, resnet):
    agent = make_agent(gpus, kubelet, cluster, clock)
    cycle(agent, clock)
    # the job is deleted and a new one of the same name (another UID, 450 W) is made; the old pods linger
    cluster.add_job(job("resnet", "uid-resnet-2", limit=450))
    cycle(agent, clock)
    assert limits(gpus) == [DEFAULT] * 4
    # the new job's pod takes GPU 3
    cluster.add_pod(pod("resnet-worker-0b", "pod-0b", cluster.jobs[("ml", "resnet")]))
    kubelet.table = [*kubelet.table, holds("resnet-worker-0b", U[3])]
    cycle(agent, clock)
    assert limits(gpus) == [DEFAULT, DEFAULT, DEFAULT, 450_000]


def test_an_nvml_refusal_is_reported_and_retried_with_a_backoff_not_in_a_hot_loop(rec, gpus, kubelet, cluster,
                                                                                     clock, resnet):
    gpus.refuse_set(U[0])
    agent = make_agent(rec, kubelet, cluster, clock)
    for _ in range(11):  # 100 s of cycles, every 10 s
        cycle(agent, clock)
    attempts = [s for s in rec.sets if s[0] == U[0]]
    assert len(attempts) == 4  # at 0, 10, 30 and 70 s: the delay doubles from one interval
    assert limits(gpus)[:3] == [DEFAULT, 300_000, 300_000]
    text = agent.metrics_text
    errors = samples(text, a.METRIC_AGENT_APPLY_ERRORS)
    assert errors == [({a.LABEL_UUID: U[0], a.LABEL_HOSTNAME: NODE, a.LABEL_ERROR: a.ERROR_NO_PERMISSION}, 4.0)]
    gauge = samples(text, a.METRIC_AGENT_GPU_ERROR)
    assert [(lb[a.LABEL_UUID], lb[a.LABEL_OPERATION], lb[a.LABEL_ERROR], v) for lb, v in gauge] == [
        (U[0], a.OPERATION_SET, a.ERROR_NO_PERMISSION, 1.0)]
    # another wanted limit is tried at once
    cluster.jobs[("ml", "resnet")]["status"][n.CONTROL] = {n.CONTROL_POWER_LIMIT_WATTS_PER_GPU: 280}
    cycle(agent, clock)
    assert rec.sets.count((U[0], 280_000)) == 1
    # once the GPU accepts, the error is gone and the limit is in force
    gpus.refuse_set(U[0], None)
    clock.advance(INTERVAL)  # the retry of 280 W waits one interval
    cycle(agent, clock)
    assert limits(gpus)[0] == 280_000
    assert samples(agent.metrics_text, a.METRIC_AGENT_GPU_ERROR) == []


def test_kubelet_unreachable_keeps_the_last_good_allocations_within_the_grace_then_resets(
        gpus, kubelet, cluster, clock, resnet, caplog):
    agent = make_agent(gpus, kubelet, cluster, clock)
    cycle(agent, clock)
    kubelet.fail = True
    # a new pod of another job arrives on GPU 3 while the kubelet cannot say so: it is not capped
    other = cluster.add_job(job("bert", "uid-bert", limit=200))
    cluster.add_pod(pod("bert-worker-0", "pod-b", other))
    with caplog.at_level(logging.WARNING, logger="etj_operator.nodeagent.agent"):
        for _ in range(GRACE_CYCLES):  # up to 60 s after the last good answer
            cycle(agent, clock)
    assert limits(gpus) == [300_000, 300_000, 300_000, DEFAULT]  # no job uncapped, nothing new capped
    assert sum("kubelet unreadable" in r.getMessage() for r in caplog.records) == 1  # logged once
    up = {lb[a.LABEL_INPUT]: v for lb, v in samples(agent.metrics_text, a.METRIC_AGENT_INPUT_UP)}
    assert up == {a.INPUT_KUBELET: 0.0, a.INPUT_API: 1.0}
    age = {lb[a.LABEL_INPUT]: v for lb, v in samples(agent.metrics_text, a.METRIC_AGENT_INPUT_AGE)}
    assert age[a.INPUT_KUBELET] == GRACE  # the last cycle ran 60 s after the last good answer
    # past the grace the agent cannot say whose cap it keeps: every GPU back to its default
    cycle(agent, clock)
    assert limits(gpus) == [DEFAULT] * 4
    expired = {lb[a.LABEL_INPUT]: v for lb, v in samples(agent.metrics_text, a.METRIC_AGENT_INPUT_EXPIRED)}
    assert expired == {a.INPUT_KUBELET: 1.0, a.INPUT_API: 0.0}
    assert {d.reason for d in agent.plan.decisions} == {a.REASON_INPUTS_EXPIRED}
    # the kubelet is back: caps again within one cycle
    kubelet.fail = False
    kubelet.table = [*kubelet.table, holds("bert-worker-0", U[3])]
    cycle(agent, clock)
    assert limits(gpus) == [300_000, 300_000, 300_000, 200_000]


def test_an_agent_started_while_the_kubelet_is_down_keeps_the_limits_in_force(node_dir, kubelet, cluster, clock,
                                                                                resnet):
    cycle(make_agent(SimulatedBackend(node_dir, NODE, count=4), kubelet, cluster, clock), clock)
    kubelet.fail = True
    restarted = make_agent(SimulatedBackend(node_dir, NODE), kubelet, cluster, clock)
    gpus = SimulatedBackend(node_dir, NODE)
    cycle(restarted, clock, advance=GRACE)
    assert limits(gpus) == [300_000, 300_000, 300_000, DEFAULT]  # not known yet: kept, not uncapped
    assert {d.reason for d in restarted.plan.decisions} == {a.REASON_INPUTS_PENDING}
    cycle(restarted, clock)  # the grace's last moment: still kept
    assert limits(gpus)[0] == 300_000
    cycle(restarted, clock)  # more than the grace after the start, and still nothing: reset
    assert limits(gpus) == [DEFAULT] * 4


def test_api_unreachable_keeps_caps_for_the_grace_and_always_resets_gpus_nobody_holds(gpus, kubelet, cluster,
                                                                                      clock, resnet):
    agent = make_agent(gpus, kubelet, cluster, clock)
    cycle(agent, clock)
    cluster.fail = True
    kubelet.table = kubelet.table[:1]  # worker-1 ends: the kubelet alone says GPU 2 is free
    cycle(agent, clock)
    assert limits(gpus) == [300_000, 300_000, DEFAULT, DEFAULT]
    up = {lb[a.LABEL_INPUT]: v for lb, v in samples(agent.metrics_text, a.METRIC_AGENT_INPUT_UP)}
    assert up == {a.INPUT_KUBELET: 1.0, a.INPUT_API: 0.0}
    for _ in range(GRACE_CYCLES):
        cycle(agent, clock)
    assert limits(gpus) == [DEFAULT] * 4  # past the grace
    cluster.fail = False
    cycle(agent, clock)
    assert limits(gpus) == [300_000, 300_000, DEFAULT, DEFAULT]


def test_a_job_read_failing_keeps_its_last_intent_for_the_grace(gpus, kubelet, cluster, clock, resnet):
    agent = make_agent(gpus, kubelet, cluster, clock)
    cycle(agent, clock)

    async def failing_job(namespace, name, uid):
        raise ConnectionError("timeout (test)")

    cluster.job = failing_job
    cycle(agent, clock)
    assert limits(gpus)[:3] == [300_000] * 3
    assert {lb[a.LABEL_INPUT]: v for lb, v in samples(agent.metrics_text, a.METRIC_AGENT_INPUT_UP)}[a.INPUT_API] == 0
    for _ in range(GRACE_CYCLES):
        cycle(agent, clock)
    assert limits(gpus) == [DEFAULT] * 4


def test_in_pod_auto_pods_choose_their_limit_and_the_operators_cap_is_a_ceiling(gpus, kubelet, cluster, clock):
    auto = cluster.add_job(job("auto", "uid-auto", mode="Auto", limit=None))
    cluster.add_pod(pod("auto-worker-0", "pod-a", auto, own_limits=True))
    kubelet.table = [holds("auto-worker-0", U[0], U[1])]
    devices = gpus.inventory().devices
    gpus.set_limit(devices[0], 450_000)  # the harness's Auto choice
    agent = make_agent(gpus, kubelet, cluster, clock)
    cycle(agent, clock)
    assert limits(gpus)[:2] == [450_000, DEFAULT]  # left as the pod set them
    auto["status"][n.CONTROL] = {n.CONTROL_POWER_LIMIT_WATTS_PER_GPU: 500}
    cycle(agent, clock)
    assert limits(gpus)[:2] == [450_000, 500_000]  # only the one above the cap is lowered
    desired = {lb[a.LABEL_UUID]: (lb[a.LABEL_REASON], v)
               for lb, v in samples(agent.metrics_text, a.METRIC_AGENT_DESIRED_LIMIT)}
    assert desired[U[0]] == (a.REASON_JOB_CEILING, 450.0)
    # the cap lifted: the GPU the ceiling lowered gets back the limit it had (the pod's), once
    auto["status"][n.CONTROL] = {}
    cycle(agent, clock)
    assert limits(gpus)[:2] == [450_000, DEFAULT]
    reasons = samples(agent.metrics_text, a.METRIC_AGENT_DESIRED_LIMIT)
    assert {lb[a.LABEL_UUID]: lb[a.LABEL_REASON] for lb, _ in reasons}[U[1]] == a.REASON_CEILING_LIFTED
    cycle(agent, clock)
    assert limits(gpus)[:2] == [450_000, DEFAULT]  # then the pod manages it again


def test_a_lifted_ceiling_leaves_a_limit_the_pod_set_since(gpus, kubelet, cluster, clock):
    auto = cluster.add_job(job("auto", "uid-auto", mode="Auto", limit=None))
    cluster.add_pod(pod("auto-worker-0", "pod-a", auto, own_limits=True))
    kubelet.table = [holds("auto-worker-0", U[0])]
    auto["status"][n.CONTROL] = {n.CONTROL_POWER_LIMIT_WATTS_PER_GPU: 500}
    agent = make_agent(gpus, kubelet, cluster, clock)
    cycle(agent, clock)
    assert limits(gpus)[0] == 500_000
    gpus.set_limit(gpus.inventory().devices[0], 400_000)  # the harness picks a candidate under the cap
    auto["status"][n.CONTROL] = {}
    cycle(agent, clock)
    assert limits(gpus)[0] == 400_000


def test_stopping_resets_every_gpu_but_those_in_pod_auto_pods_manage(gpus, kubelet, cluster, clock, resnet):
    auto = cluster.add_job(job("auto", "uid-auto", mode="Auto", limit=None))
    cluster.add_pod(pod("auto-worker-0", "pod-a", auto, own_limits=True))
    kubelet.table = [*kubelet.table, holds("auto-worker-0", U[3])]
    gpus.set_limit(gpus.inventory().devices[3], 450_000)
    agent = make_agent(gpus, kubelet, cluster, clock)
    run_until(agent, cycles=3)
    assert agent.snapshot.cycles == 3
    assert limits(gpus) == [DEFAULT, DEFAULT, DEFAULT, 450_000]


def test_auto_through_the_agent_applies_the_answer_to_the_jobs_gpus_only(gpus, kubelet, cluster, clock):
    auto = cluster.add_job(job("auto", "uid-auto", mode="Auto", limit=None))
    other = cluster.add_job(job("other", "uid-other", mode="Auto", limit=None, auto=250))
    cluster.add_pod(pod("auto-worker-0", "pod-a", auto))
    cluster.add_pod(pod("other-worker-0", "pod-o", other))
    kubelet.table = [holds("auto-worker-0", U[0], U[1]), holds("other-worker-0", U[2])]
    agent = make_agent(gpus, kubelet, cluster, clock)
    cycle(agent, clock)
    assert limits(gpus) == [DEFAULT, DEFAULT, 250_000, DEFAULT]  # no request yet: the default
    auto["status"][n.CONTROL] = {n.CONTROL_AUTO_LIMIT_WATTS_PER_GPU: 400, n.CONTROL_AUTO_REQUEST_SEQ: 2}
    cycle(agent, clock)
    assert limits(gpus) == [400_000, 400_000, 250_000, DEFAULT]  # the other job's GPU is untouched
    desired = {lb[a.LABEL_UUID]: (lb[a.LABEL_REASON], lb[a.LABEL_JOB_UID], v)
               for lb, v in samples(agent.metrics_text, a.METRIC_AGENT_DESIRED_LIMIT)}
    assert desired[U[0]] == (a.REASON_AUTO_CANDIDATE, "uid-auto", 400.0)
    assert desired[U[2]] == (a.REASON_AUTO_CANDIDATE, "uid-other", 250.0)
    # a throttle arrives before the operator answers again: never above it
    auto["status"][n.CONTROL][n.CONTROL_POWER_LIMIT_WATTS_PER_GPU] = 300
    cycle(agent, clock)
    assert limits(gpus)[:2] == [300_000, 300_000]


def test_an_agent_restart_reapplies_the_auto_answer_and_a_finished_job_gets_the_default(gpus, kubelet, cluster,
                                                                                        clock):
    auto = cluster.add_job(job("auto", "uid-auto", mode="Auto", limit=None, auto=350))
    cluster.add_pod(pod("auto-worker-0", "pod-a", auto))
    kubelet.table = [holds("auto-worker-0", U[0])]
    run_until(make_agent(gpus, kubelet, cluster, clock), cycles=1)
    assert limits(gpus)[0] == DEFAULT  # an agent that stops puts an agent-enforced Auto GPU back
    agent = make_agent(gpus, kubelet, cluster, clock)
    cycle(agent, clock)
    assert limits(gpus)[0] == 350_000  # the next agent applies it again from the job alone
    auto["status"]["phase"] = "Succeeded"
    cycle(agent, clock)
    assert limits(gpus)[0] == DEFAULT
    auto["status"]["phase"] = "Running"
    cycle(agent, clock)
    del cluster.jobs[(NS, "auto")]
    cycle(agent, clock)
    assert limits(gpus)[0] == DEFAULT


def test_keep_limits_on_exit_leaves_them(gpus, kubelet, cluster, clock, resnet):
    agent = make_agent(gpus, kubelet, cluster, clock, reset_on_exit=False)
    run_until(agent, cycles=1)
    assert limits(gpus)[:3] == [300_000] * 3


def test_allocations_of_devices_the_node_lacks_are_reported(gpus, kubelet, cluster, clock, resnet):
    kubelet.table = [*kubelet.table, holds("resnet-worker-1", "GPU-not-here")]
    agent = make_agent(gpus, kubelet, cluster, clock)
    cycle(agent, clock)
    assert samples(agent.metrics_text, a.METRIC_AGENT_UNKNOWN_DEVICE) == [
        ({a.LABEL_DEVICE_ID: "GPU-not-here", a.LABEL_HOSTNAME: NODE, a.LABEL_CONTAINER: "trainer",
          a.LABEL_NAMESPACE: "ml", a.LABEL_POD: "resnet-worker-1"}, 1.0)]
    assert limits(gpus)[:3] == [300_000] * 3


def test_changes_are_logged_once_not_every_cycle(gpus, kubelet, cluster, clock, resnet, caplog):
    agent = make_agent(gpus, kubelet, cluster, clock)
    with caplog.at_level(logging.INFO, logger="etj_operator.nodeagent"):
        cycle(agent, clock)
        first = len(caplog.records)
        cycle(agent, clock)
        cycle(agent, clock)
    assert first >= 3
    assert len(caplog.records) == first


def test_the_agent_over_a_real_pod_resources_socket(tmp_path, gpus, cluster, clock, resnet, kubelet):
    """The kubelet's gRPC answer end to end: a kubelet that stops and comes back."""
    socket = tmp_path / "kubelet.sock"
    client = PodResourcesClient(socket, timeout_seconds=2)
    agent = make_agent(gpus, client, cluster, clock)
    with PodResourcesServer(socket, kubelet.table) as server:
        cycle(agent, clock)
        assert limits(gpus) == [300_000, 300_000, 300_000, DEFAULT]
        server.set_allocations(kubelet.table[:1])
        cycle(agent, clock)
        assert limits(gpus) == [300_000, 300_000, DEFAULT, DEFAULT]
    cycle(agent, clock)  # the kubelet is gone: kept
    assert limits(gpus) == [300_000, 300_000, DEFAULT, DEFAULT]
    with PodResourcesServer(socket, []):
        cycle(agent, clock)  # back, and nobody holds anything
    assert limits(gpus) == [DEFAULT] * 4


def test_health_follows_the_cycles(gpus, kubelet, cluster, clock):
    agent = make_agent(gpus, kubelet, cluster, clock)
    assert agent.healthy()
    cycle(agent)
    clock.advance(3 * INTERVAL + 31)
    assert not agent.healthy()
    cycle(agent)
    assert agent.healthy()
