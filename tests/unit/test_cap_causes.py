"""PowerCapEnforced names the node agent's cause when a cap is not in force (policies._verify_cap)."""

import dataclasses

from etj_contract import ControlSection, PlacementSection, PolicySection, WorkloadReport
from etj_operator.energy import EnergyState
from etj_operator.models import parse_spec
from etj_operator.policies import PolicyInputs, PolicySettings, decide
from etj_operator.telemetry.base import AgentFindings, AgentGpuError, AgentUnknownDevice

from jobs import job_manifest

FIXED = parse_spec(job_manifest(energy={"power": {"mode": "Fixed", "limitWatts": 300}})["spec"], "digits")
WITH_AGENT = PolicySettings(node_agent=True)
GRACE = WITH_AGENT.cap_grace_seconds
DEFAULT = (700.0,) * 4  # what 4 GPUs report when nothing applied the 300 W cap

NO_AGENT = AgentFindings(read=True, nodes_without_agent=("gpu-node-2",))
REFUSED = AgentFindings(read=True, gpu_errors=(AgentGpuError("gpu-node-1", "GPU-1", "set", "NoPermission"),))
NOT_FOUND = AgentFindings(read=True, unknown_devices=(AgentUnknownDevice("gpu-node-1", "ml/w-0", "MIG-7"),))


def inputs(*, agent, limits=DEFAULT, settings=WITH_AGENT, now=1000.0, policy=None, found_reason=None):
    return PolicyInputs(
        spec=FIXED,
        energy=EnergyState(current_watts=900),
        now_seconds=now,
        control=ControlSection(),
        policy=policy or PolicySection(),
        placement=PlacementSection(),
        workload=WorkloadReport(),
        fresh_telemetry=True,
        telemetry_ok=True,
        gpu_count=4,
        applied_limits_watts=limits,
        agent=agent,
        condition_reasons={} if found_reason is None else {"PowerCapEnforced": found_reason},
        settings=settings,
    )


def verdict(out):
    return next(x for x in out.conditions if x.type == "PowerCapEnforced")


def past_grace(agent, **kw):
    """The verdict after the enforcer's grace: a first pass starts the cap's clock, the second is past it."""
    first = decide(inputs(agent=agent, **kw))
    return decide(inputs(agent=agent, now=1000.0 + GRACE, policy=first.policy, **kw))


def test_no_agent_on_a_node_is_named_with_the_node_and_the_limits_found():
    out = past_grace(NO_AGENT)
    v = verdict(out)
    assert (v.status, v.reason) == (False, "NoAgentOnNode")
    assert "gpu-node-2" in v.message and "700 W" in v.message and "300 W" in v.message
    (event,) = out.events
    assert (event.type, event.reason) == ("Warning", "PowerCapNotEnforced") and "gpu-node-2" in event.message


def test_a_refused_set_names_the_gpu_and_nvmls_error_kind():
    v = verdict(past_grace(REFUSED))
    assert (v.status, v.reason) == (False, "AgentApplyFailed")
    assert "NVML refused" in v.message and "GPU-1 on gpu-node-1: NoPermission" in v.message


def test_a_gpu_the_agent_does_not_find_is_named():
    v = verdict(past_grace(NOT_FOUND))
    assert (v.reason, "MIG-7" in v.message) == ("GpuNotFound", True)
    # NVML's own GpuNotFound on a set is that cause too, not a refusal
    lost = AgentFindings(read=True, gpu_errors=(AgentGpuError("gpu-node-1", "GPU-1", "set", "GpuNotFound"),))
    assert verdict(past_grace(lost)).reason == "GpuNotFound"


def test_the_causes_are_chosen_in_order_and_failed_reads_are_no_cause():
    everything = AgentFindings(
        read=True,
        nodes_without_agent=NO_AGENT.nodes_without_agent,
        gpu_errors=REFUSED.gpu_errors,
        unknown_devices=NOT_FOUND.unknown_devices,
    )
    assert verdict(past_grace(everything)).reason == "NoAgentOnNode"
    assert verdict(past_grace(dataclasses.replace(everything, nodes_without_agent=()))).reason == "AgentApplyFailed"
    read_failed = AgentFindings(read=True, gpu_errors=(AgentGpuError("gpu-node-1", "GPU-1", "read", "Timeout"),))
    assert verdict(past_grace(read_failed)).reason == "LimitNotApplied"
    assert verdict(past_grace(AgentFindings(read=True), limits=())).reason == "NoLimitReadings"


def test_within_the_grace_the_cap_is_applying_and_the_cause_is_in_the_message():
    out = decide(inputs(agent=NO_AGENT))
    v = verdict(out)
    assert (v.reason, "gpu-node-2" in v.message) == ("Applying", True) and out.events == []


def test_without_the_agent_enabled_or_read_the_causes_do_not_apply():
    assert verdict(past_grace(NO_AGENT, settings=PolicySettings())).reason == "LimitNotApplied"
    unread = AgentFindings(nodes_without_agent=("gpu-node-2",))  # a source that reads no agent says nothing
    assert verdict(past_grace(unread)).reason == "LimitNotApplied"


def test_a_cap_in_force_is_enforced_whatever_the_agent_says():
    v = verdict(past_grace(NO_AGENT, limits=(300.0,) * 4))
    assert (v.status, v.reason) == (True, "LimitsApplied")


def test_one_warning_per_cause_not_per_pass():
    out = past_grace(REFUSED)
    assert [e.reason for e in out.events] == ["PowerCapNotEnforced"]
    # the next passes find the condition with that reason: no new Event
    again = decide(inputs(agent=REFUSED, now=1010.0 + GRACE, policy=out.policy, found_reason="AgentApplyFailed"))
    assert verdict(again).reason == "AgentApplyFailed" and again.events == []
    # the cause changes to another of the agent's: said once more
    moved = decide(inputs(agent=NO_AGENT, now=1020.0 + GRACE, policy=again.policy, found_reason="AgentApplyFailed"))
    assert verdict(moved).reason == "NoAgentOnNode" and [e.reason for e in moved.events] == ["PowerCapNotEnforced"]
    stays = decide(inputs(agent=NO_AGENT, now=1030.0 + GRACE, policy=moved.policy, found_reason="NoAgentOnNode"))
    assert stays.events == []
    # back to a cause that is not the agent's: already warned for this cap, no new Event
    plain = decide(inputs(agent=AgentFindings(read=True), now=1040.0 + GRACE, policy=stays.policy,
                          found_reason="NoAgentOnNode"))
    assert verdict(plain).reason == "LimitNotApplied" and plain.events == []
    # the agent applies it: enforced, and said so
    done = decide(inputs(agent=AgentFindings(read=True), limits=(300.0,) * 4, now=1050.0 + GRACE,
                         policy=plain.policy, found_reason="LimitNotApplied"))
    assert verdict(done).status is True and [e.reason for e in done.events] == ["PowerCapEnforced"]
