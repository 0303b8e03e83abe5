"""A job's intent and a pod's controller, from the objects the API returns."""

from __future__ import annotations

import pytest
from agentkit import job, pod

from etj_contract import names as n
from etj_operator.nodeagent.intent import job_intent, pod_info
from etj_operator.nodeagent.records import JobIntent


@pytest.mark.parametrize(
    ("obj", "watts", "pod_managed"),
    [
        (job("j", "u", limit=300), 300, False),
        (job("j", "u", limit=300, cap=250), 250, False),  # the throttle lowers a Fixed limit
        (job("j", "u", limit=300, cap=350), 300, False),  # but never raises it
        (job("j", "u", mode="Unmanaged", limit=None), None, False),
        (job("j", "u", mode="Unmanaged", limit=None, cap=275), 275, False),
        (job("j", "u", mode="Auto", limit=None), None, True),
        (job("j", "u", mode="Auto", limit=None, cap=400), 400, True),
        (job("j", "u", limit=300, cap=250, phase="Succeeded"), None, False),  # a finished job asks nothing
        (job("j", "u", limit=300, phase="Failed"), None, False),
    ],
)
def test_job_intent(obj, watts, pod_managed):
    intent = job_intent(obj)
    assert (intent.uid, intent.watts, intent.pod_managed, intent.problems) == ("u", watts, pod_managed, ())


@pytest.mark.parametrize(
    ("obj", "auto_watts", "problem"),
    [
        (job("j", "u", mode="Auto", limit=None, auto=350), 350, False),
        (job("j", "u", mode="Auto", limit=None, auto=350, cap=300), 300, False),  # never above the cap
        (job("j", "u", mode="Auto", limit=None, auto=0), None, True),  # no limit: dropped and named
        (job("j", "u", mode="Auto", limit=None, auto=350, phase="Succeeded"), None, False),
        (job("j", "u", limit=300, auto=350), None, False),  # only mode Auto reads the answer
    ],
)
def test_the_auto_answer(obj, auto_watts, problem):
    intent = job_intent(obj)
    assert intent.auto_watts == auto_watts
    assert bool(intent.problems) == problem


def test_pod_info_says_whether_the_pod_may_set_limits_itself():
    owner = job("resnet", "uid-a")
    assert pod_info(pod("w-0", "p", owner, own_limits=True)).sets_own_limits
    assert not pod_info(pod("w-0", "p", owner)).sets_own_limits
    privileged = pod("w-0", "p", owner)
    privileged["spec"]["containers"].append({"name": "side", "securityContext": {"privileged": True}})
    assert pod_info(privileged).sets_own_limits
    prefixed = pod("w-0", "p", owner)
    prefixed["spec"]["containers"][0]["securityContext"] = {"capabilities": {"add": ["CAP_SYS_ADMIN"]}}
    assert pod_info(prefixed).sets_own_limits
    odd = pod("w-0", "p", owner)
    odd["spec"]["containers"] = [{"securityContext": {"capabilities": {"add": "SYS_ADMIN"}}}, "junk"]
    assert not pod_info(odd).sets_own_limits  # a malformed spec grants nothing


def test_a_job_without_energy_section_asks_nothing():
    assert job_intent({"metadata": {"uid": "u"}, "spec": {}}) == JobIntent("u")
    assert job_intent({}) == JobIntent("")


def test_a_malformed_spec_caps_nothing_but_the_operators_cap_still_applies():
    broken = job("j", "u", limit=300)
    broken["spec"]["energy"]["power"] = {"mode": "Fixed"}  # limitWatts missing
    intent = job_intent(broken)
    assert intent.watts is None
    assert intent.problems == ("spec.energy.power.limitWatts: required when mode is Fixed",)
    broken["status"][n.CONTROL] = {n.CONTROL_POWER_LIMIT_WATTS_PER_GPU: 220}
    assert job_intent(broken).watts == 220


def test_a_malformed_cap_is_dropped_and_named():
    obj = job("j", "u", limit=300)
    obj["status"][n.CONTROL] = {n.CONTROL_POWER_LIMIT_WATTS_PER_GPU: "lots"}
    intent = job_intent(obj)
    assert intent.watts == 300
    assert intent.problems and "powerLimitWattsPerGPU" in intent.problems[0]
    obj["status"][n.CONTROL] = {n.CONTROL_POWER_LIMIT_WATTS_PER_GPU: 0}
    assert job_intent(obj).watts == 300


def test_pod_info_reads_the_controller_job_by_uid():
    owner = job("resnet", "uid-a")
    info = pod_info(pod("resnet-worker-0", "pod-uid", owner, phase="Pending"))
    assert info is not None
    assert (info.uid, info.namespace, info.name, info.phase) == ("pod-uid", "ml", "resnet-worker-0", "Pending")
    assert (info.job_uid, info.job_name) == ("uid-a", "resnet")
    assert info.labels == {n.LABEL_ROLE: "worker"}


def test_pod_info_ignores_owners_that_are_not_an_efficienttrainingjob_controller():
    owner = job("resnet", "uid-a")
    obj = pod("p", "pod-uid", owner)
    obj["metadata"]["ownerReferences"][0]["controller"] = False
    assert pod_info(obj).job_uid is None
    obj = pod("p", "pod-uid", {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x", "uid": "y"}})
    assert pod_info(obj).job_uid is None
    obj = pod("p", "pod-uid", {"apiVersion": "other.dev/v1", "kind": n.KIND, "metadata": {"name": "x", "uid": "y"}})
    assert pod_info(obj).job_uid is None
    obj = pod("p", "pod-uid", None)
    obj["metadata"]["ownerReferences"] = "nonsense"
    assert pod_info(obj).job_uid is None


def test_pod_info_needs_an_identity():
    assert pod_info({}) is None
    assert pod_info({"metadata": {"name": "p", "namespace": "ml"}}) is None
