"""The node agent's pure decision, table by table."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from agentkit import holds, job, pod

from etj_contract import agent as a
from etj_operator.nodeagent.intent import job_intent, pod_info
from etj_operator.nodeagent.plan import device_uuid, plan_node
from etj_operator.nodeagent.records import ContainerAllocation, GpuDevice, JobIntent, Unavailable, UnknownDevice

GPUS = tuple(GpuDevice(f"GPU-{i}", i, "H100", 200_000, 700_000, 700_000) for i in range(4))
DEFAULT = 700_000

JOB_A = job("resnet", "uid-a", limit=300)
JOB_B = job("bert", "uid-b", mode="Unmanaged", limit=None, cap=250)
JOB_C = job("tiny", "uid-c", limit=100)  # under the card's 200 W minimum
JOB_D = job("huge", "uid-d", limit=900)  # over its 700 W maximum
JOB_E = job("free", "uid-e", mode="Unmanaged", limit=None)  # asks nothing
JOB_AUTO = job("auto", "uid-auto", mode="Auto", limit=None)
JOB_AUTO_CAPPED = job("auto-capped", "uid-auto2", mode="Auto", limit=None, cap=400)
JOB_AUTO_ASKED = job("auto-asked", "uid-auto3", mode="Auto", limit=None, auto=350)
JOB_AUTO_LOW = job("auto-low", "uid-auto4", mode="Auto", limit=None, auto=150)  # under the card's minimum
OTHER_OWNER = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-7d4", "uid": "uid-rs"}}


def pods_of(*objects):
    return [pod_info(o) for o in objects]


def intents_of(*jobs):
    return {j["metadata"]["uid"]: job_intent(j) for j in jobs}


@dataclass
class Case:
    name: str
    allocations: list[ContainerAllocation] | Unavailable
    pods: list | Unavailable
    intents: dict = field(default_factory=dict)
    #: GPU index -> (action, target mW or None, reason, job uid or None)
    expect: dict = field(default_factory=dict)


def default(reason, job_uid=None):
    return ("set", DEFAULT, reason, job_uid)


CASES = [
    Case(
        "a job is capped on its GPUs only",
        [holds("resnet-0", "GPU-0", "GPU-1"), holds("web", "GPU-2")],
        pods_of(pod("resnet-0", "p1", JOB_A), pod("web", "p2", OTHER_OWNER)),
        intents_of(JOB_A),
        {0: ("set", 300_000, a.REASON_JOB_LIMIT, "uid-a"), 1: ("set", 300_000, a.REASON_JOB_LIMIT, "uid-a"),
         2: default(a.REASON_UNMANAGED_POD), 3: default(a.REASON_NOT_HELD)},
    ),
    Case(
        "the operator's cap, the throttle, applies in mode Unmanaged",
        [holds("bert-0", "GPU-3")],
        pods_of(pod("bert-0", "p1", JOB_B)),
        intents_of(JOB_B),
        {3: ("set", 250_000, a.REASON_JOB_LIMIT, "uid-b")},
    ),
    Case(
        "limits are clamped to the card's constraints",
        [holds("tiny-0", "GPU-0"), holds("huge-0", "GPU-1")],
        pods_of(pod("tiny-0", "p1", JOB_C), pod("huge-0", "p2", JOB_D)),
        intents_of(JOB_C, JOB_D),
        {0: ("set", 200_000, a.REASON_JOB_LIMIT_CLAMPED, "uid-c"),
         1: ("set", 700_000, a.REASON_JOB_LIMIT_CLAMPED, "uid-d")},
    ),
    Case(
        "a pod whose job asks nothing gets the default",
        [holds("free-0", "GPU-0")],
        pods_of(pod("free-0", "p1", JOB_E)),
        intents_of(JOB_E),
        {0: default(a.REASON_NO_LIMIT_ASKED, "uid-e")},
    ),
    Case(
        "a pod of a deleted job gets the default",
        [holds("resnet-0", "GPU-0")],
        pods_of(pod("resnet-0", "p1", JOB_A)),
        {},
        {0: default(a.REASON_JOB_GONE, "uid-a")},
    ),
    Case(
        "a name reused by a new job with another UID is not the old job",
        [holds("resnet-0", "GPU-0")],
        pods_of(pod("resnet-0", "p1", JOB_A)),  # the pod still names the old job's UID
        intents_of(job("resnet", "uid-a-new", limit=200)),  # the API's job of that name is a new one
        {0: default(a.REASON_JOB_GONE, "uid-a")},
    ),
    Case(
        "the new job's pod gets the new job's limit, the old job's pod does not",
        [holds("resnet-0", "GPU-0"), holds("resnet-0", "GPU-1", namespace="other")],
        pods_of(pod("resnet-0", "p-new", job("resnet", "uid-a-new", limit=200)),
                pod("resnet-0", "p-old", JOB_A, namespace="other")),
        intents_of(job("resnet", "uid-a-new", limit=200)),
        {0: ("set", 200_000, a.REASON_JOB_LIMIT, "uid-a-new"), 1: default(a.REASON_JOB_GONE, "uid-a")},
    ),
    Case(
        "a foreign pod, a pod the API does not show, and a finished pod get the default",
        [holds("web", "GPU-0"), holds("ghost", "GPU-1"), holds("resnet-0", "GPU-2")],
        pods_of(pod("web", "p1", None), pod("resnet-0", "p2", JOB_A, phase="Succeeded")),
        intents_of(JOB_A),
        {0: default(a.REASON_UNMANAGED_POD), 1: default(a.REASON_POD_UNKNOWN),
         2: default(a.REASON_POD_FINISHED, "uid-a")},
    ),
    Case(
        "a pod on another node is not this node's (the API read is by node)",
        [holds("resnet-0", "GPU-0")],
        [],
        intents_of(JOB_A),
        {0: default(a.REASON_POD_UNKNOWN)},
    ),
    Case(
        "a controller of another group named EfficientTrainingJob is no job of ours",
        [holds("resnet-0", "GPU-0")],
        pods_of(pod("resnet-0", "p1", {**JOB_A, "apiVersion": "example.com/v1"})),
        intents_of(JOB_A),
        {0: default(a.REASON_UNMANAGED_POD)},
    ),
    Case(
        "Auto through the agent: the operator's answer on the job's GPUs only; without one the cap, or the default",
        [holds("auto-asked-0", "GPU-0", "GPU-1"), holds("auto-capped-0", "GPU-2"), holds("auto-0", "GPU-3")],
        pods_of(pod("auto-asked-0", "p1", JOB_AUTO_ASKED), pod("auto-capped-0", "p2", JOB_AUTO_CAPPED),
                pod("auto-0", "p3", JOB_AUTO)),
        intents_of(JOB_AUTO_ASKED, JOB_AUTO_CAPPED, JOB_AUTO),
        {0: ("set", 350_000, a.REASON_AUTO_CANDIDATE, "uid-auto3"),
         1: ("set", 350_000, a.REASON_AUTO_CANDIDATE, "uid-auto3"),
         2: ("set", 400_000, a.REASON_JOB_LIMIT, "uid-auto2"),
         3: default(a.REASON_NO_LIMIT_ASKED, "uid-auto")},
    ),
    Case(
        "Auto through the agent: an answer under the card's range is clamped to it",
        [holds("auto-low-0", "GPU-0")],
        pods_of(pod("auto-low-0", "p1", JOB_AUTO_LOW)),
        intents_of(JOB_AUTO_LOW),
        {0: ("set", 200_000, a.REASON_AUTO_CANDIDATE, "uid-auto4")},
    ),
    Case(
        "an Auto job's answer never reaches a GPU its pods do not hold, nor another job's",
        [holds("auto-asked-0", "GPU-0"), holds("resnet-0", "GPU-1"), holds("auto-0", "GPU-2")],
        pods_of(pod("auto-asked-0", "p1", JOB_AUTO_ASKED), pod("resnet-0", "p2", JOB_A), pod("auto-0", "p3", JOB_AUTO)),
        intents_of(JOB_AUTO_ASKED, JOB_A, JOB_AUTO),
        {0: ("set", 350_000, a.REASON_AUTO_CANDIDATE, "uid-auto3"), 1: ("set", 300_000, a.REASON_JOB_LIMIT, "uid-a"),
         2: default(a.REASON_NO_LIMIT_ASKED, "uid-auto"), 3: default(a.REASON_NOT_HELD)},
    ),
    Case(
        "a GPU shared by an agent-enforced Auto pod and an in-pod one gets the default",
        [holds("auto-asked-0", "GPU-0::1"), holds("auto-asked-1", "GPU-0::2")],
        pods_of(pod("auto-asked-0", "p1", JOB_AUTO_ASKED), pod("auto-asked-1", "p2", JOB_AUTO_ASKED, own_limits=True)),
        intents_of(JOB_AUTO_ASKED),
        {0: default(a.REASON_SHARED)},
    ),
    Case(
        "Auto in the pod (SYS_ADMIN): the pod's harness owns the limit, the operator's cap is a ceiling",
        [holds("auto-0", "GPU-0"), holds("auto-capped-0", "GPU-1")],
        pods_of(pod("auto-0", "p1", JOB_AUTO, own_limits=True), pod("auto-capped-0", "p2", JOB_AUTO_CAPPED,
                                                                       own_limits=True)),
        intents_of(JOB_AUTO, JOB_AUTO_CAPPED),
        {0: ("leave", None, a.REASON_POD_MANAGED, "uid-auto"),
         1: ("ceiling", 400_000, a.REASON_JOB_CEILING, "uid-auto2")},
    ),
    Case(
        "a GPU shared by two jobs, or by a job and a foreign pod, gets the default",
        [holds("resnet-0", "GPU-0::1"), holds("bert-0", "GPU-0::2"), holds("resnet-0", "GPU-1::1"),
         holds("web", "GPU-1::2")],
        pods_of(pod("resnet-0", "p1", JOB_A), pod("bert-0", "p2", JOB_B), pod("web", "p3", None)),
        intents_of(JOB_A, JOB_B),
        {0: default(a.REASON_SHARED), 1: default(a.REASON_SHARED)},
    ),
    Case(
        "a GPU shared by two pods of one job gets the job's limit (time-sliced replicas)",
        [holds("resnet-0", "GPU-0::1"), holds("resnet-1", "GPU-0::2")],
        pods_of(pod("resnet-0", "p1", JOB_A), pod("resnet-1", "p2", JOB_A)),
        intents_of(JOB_A),
        {0: ("set", 300_000, a.REASON_JOB_LIMIT, "uid-a")},
    ),
    Case(
        "device ids by index (the device plugin's index strategy) and other resources",
        [holds("resnet-0", "2"), ContainerAllocation("ml", "resnet-0", "trainer", "nvidia.com/mig-1g.10gb",
                                                     ("MIG-x",))],
        pods_of(pod("resnet-0", "p1", JOB_A)),
        intents_of(JOB_A),
        {2: ("set", 300_000, a.REASON_JOB_LIMIT, "uid-a"), 0: default(a.REASON_NOT_HELD)},
    ),
    Case(
        "kubelet not read yet: every limit in force is kept",
        Unavailable.PENDING,
        pods_of(pod("resnet-0", "p1", JOB_A)),
        intents_of(JOB_A),
        {i: ("leave", None, a.REASON_INPUTS_PENDING, None) for i in range(4)},
    ),
    Case(
        "kubelet failing past the grace: every GPU back to its default",
        Unavailable.EXPIRED,
        pods_of(pod("resnet-0", "p1", JOB_A)),
        intents_of(JOB_A),
        {i: default(a.REASON_INPUTS_EXPIRED) for i in range(4)},
    ),
    Case(
        "API not read yet: held GPUs keep their limit, GPUs nobody holds are reset",
        [holds("resnet-0", "GPU-0")],
        Unavailable.PENDING,
        {},
        {0: ("leave", None, a.REASON_INPUTS_PENDING, None), 1: default(a.REASON_NOT_HELD)},
    ),
    Case(
        "API failing past the grace: held GPUs back to default too",
        [holds("resnet-0", "GPU-0")],
        Unavailable.EXPIRED,
        {},
        {0: default(a.REASON_INPUTS_EXPIRED), 1: default(a.REASON_NOT_HELD)},
    ),
    Case(
        "a job not read yet keeps its GPUs' limits; one failing past the grace is reset",
        [holds("resnet-0", "GPU-0"), holds("bert-0", "GPU-1")],
        pods_of(pod("resnet-0", "p1", JOB_A), pod("bert-0", "p2", JOB_B)),
        {"uid-a": Unavailable.PENDING, "uid-b": Unavailable.EXPIRED},
        {0: ("leave", None, a.REASON_INPUTS_PENDING, "uid-a"), 1: default(a.REASON_INPUTS_EXPIRED, "uid-b")},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_plan(case: Case):
    plan = plan_node(GPUS, case.allocations, case.pods, case.intents)
    assert [d.device.index for d in plan.decisions] == [0, 1, 2, 3]
    got = {d.device.index: (d.action, d.target_mw, d.reason, d.job_uid) for d in plan.decisions}
    for index, expected in case.expect.items():
        assert got[index] == expected, (index, plan.decisions[index])


def test_every_gpu_gets_exactly_one_decision_and_the_clamp_is_explained():
    plan = plan_node(GPUS, [holds("tiny-0", "GPU-0")], pods_of(pod("tiny-0", "p1", JOB_C)), intents_of(JOB_C))
    decision = plan.by_uuid()["GPU-0"]
    assert decision.requested_watts == 100
    assert decision.note == "asked 100 W, the card allows 200..700 W"
    assert decision.holders[0].pod_uid == "p1" and decision.holders[0].job_uid == "uid-c"
    assert len(plan.decisions) == len(GPUS)


def test_allocations_of_devices_the_node_lacks_are_listed():
    plan = plan_node(GPUS, [holds("resnet-0", "GPU-0", "GPU-zzz", "7")], pods_of(pod("resnet-0", "p1", JOB_A)),
                     intents_of(JOB_A))
    assert plan.unknown_devices == (UnknownDevice("GPU-zzz", "ml", "resnet-0", "trainer"),
                                    UnknownDevice("7", "ml", "resnet-0", "trainer"))
    assert plan.by_uuid()["GPU-0"].target_mw == 300_000


def test_no_gpus_no_decisions():
    assert plan_node((), [holds("p", "GPU-0")], [], {}).decisions == ()


def test_device_uuid_strips_the_replica_suffix():
    assert device_uuid("GPU-abc::3") == "GPU-abc"
    assert device_uuid("GPU-abc") == "GPU-abc"


def test_a_job_intent_given_directly():
    plan = plan_node(GPUS, [holds("x-0", "GPU-0")], pods_of(pod("x-0", "p1", JOB_A)),
                     {"uid-a": JobIntent("uid-a", 450)})
    assert plan.by_uuid()["GPU-0"].target_mw == 450_000
