"""Energy policies as pure functions: throttle, energy budget, carbon pause, reschedule, energy-triggered stages.

:func:`decide` takes what the operator knows about a job this cycle (:class:`PolicyInputs`) and returns a
:class:`PolicyOutcome`: the new ``status.control`` (what the harness obeys), the policy's own bookkeeping
(``status.policy``), ``status.placement``, conditions and events, and what the lifecycle must do with the
pods (hold them deleted as Paused/Suspended, fail the job, or recreate them elsewhere).

Actions that stop pods first ask the harness for a checkpoint (``control.checkpointRequested`` = n + 1)
and wait until the harness acknowledges it (``status.workload.checkpoint.acknowledged`` >= n + 1) or a
timeout passes: this is the "drain" below. A job without ``spec.checkpoint`` is drained at once.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from etj_operator import contract as c
from etj_operator.energy import EnergyState
from etj_operator.lifecycle import Event
from etj_operator.models import JobSpec

# Condition types and reasons owned by the policies.
TELEMETRY_AVAILABLE: Final = "TelemetryAvailable"
THROTTLED: Final = "Throttled"
BUDGET_EXCEEDED: Final = "BudgetExceeded"
PAUSED: Final = "Paused"
RESCHEDULING: Final = "Rescheduling"
POWER_PRESSURE_ANNOTATION: Final = f"{c.GROUP}/power-pressure"

DRAIN_BUDGET_STOP: Final = "EnergyBudgetStop"
DRAIN_BUDGET_SUSPEND: Final = "EnergyBudgetSuspend"
DRAIN_CARBON: Final = "CarbonPause"
DRAIN_RESCHEDULE: Final = "PowerPressure"


@dataclass(frozen=True)
class PolicySettings:
    """Operator-wide constants of the policies."""

    gpu_min_limit_watts: int = 200
    gpu_max_limit_watts: int = 700
    #: A budget cap is released once the job draws less than this fraction of the budget ...
    release_fraction: float = 0.85
    #: ... for this many consecutive telemetry cycles (hysteresis against oscillation).
    release_after_cycles: int = 3
    checkpoint_timeout_seconds: float = 120.0


@dataclass(frozen=True)
class PolicyInputs:
    """What the policies decide from (one job, one cycle)."""

    spec: JobSpec
    energy: EnergyState
    now_seconds: float
    control: Mapping[str, Any]
    policy: Mapping[str, Any]
    placement: Mapping[str, Any]
    workload: Mapping[str, Any]
    #: A telemetry cycle for this job arrived since the last decision.
    fresh_telemetry: bool
    #: This job's GPUs had readings in the latest cycle; else why not.
    telemetry_ok: bool
    telemetry_reason: str = ""
    gpu_count: int = 0
    intensity_grams_per_kwh: float | None = None
    pods_exist: bool = True
    #: Nodes running this job's pods that carry the power-pressure annotation.
    pressured_nodes: Sequence[str] = ()
    settings: PolicySettings = field(default_factory=PolicySettings)


@dataclass
class ConditionChange:
    """A condition to set on the job."""

    type: str
    status: bool
    reason: str
    message: str


@dataclass
class PolicyOutcome:
    """The policies' decisions for one cycle."""

    control: dict[str, Any]
    policy: dict[str, Any]
    placement: dict[str, Any]
    conditions: list[ConditionChange] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    #: Pods must not run: "Paused" | "Suspended" (the lifecycle deletes them and shows this phase).
    hold: str | None = None
    #: Finish the job as Failed with (reason, message).
    fail: tuple[str, str] | None = None
    #: Delete the pods now so the lifecycle recreates them (reschedule).
    recreate_pods: bool = False
    throttled: bool = False
    decisions: list[str] = field(default_factory=list)


def throttle_limit(
    budget_watts: float, gpu_count: int, min_watts: int, max_watts: int
) -> tuple[int, bool]:
    """Per-GPU limit that keeps ``gpu_count`` GPUs under ``budget_watts``: (limit, budget_reachable)."""
    share = math.floor(budget_watts / gpu_count)
    if share < min_watts:
        return min_watts, False
    return min(share, max_watts), True


def decide(inputs: PolicyInputs) -> PolicyOutcome:
    """Run every policy for one job and cycle."""
    out = PolicyOutcome(
        control=copy.deepcopy(dict(inputs.control)),
        policy=copy.deepcopy(dict(inputs.policy)),
        placement=copy.deepcopy(dict(inputs.placement)),
    )
    _telemetry_condition(inputs, out)
    _energy_fraction(inputs, out)
    _budget(inputs, out)
    if out.fail is None and out.hold is None:
        _carbon(inputs, out)
    if out.fail is None and out.hold is None:
        _reschedule(inputs, out)
    _throttle(inputs, out)
    _finish_drain(inputs, out)
    return out


# --- telemetry ------------------------------------------------------------------------------------------
def _telemetry_condition(i: PolicyInputs, out: PolicyOutcome) -> None:
    if not i.fresh_telemetry:
        return
    if i.telemetry_ok:
        out.conditions.append(ConditionChange(TELEMETRY_AVAILABLE, True, "SamplesReceived", "GPU readings arrive"))
    else:
        reason = i.telemetry_reason or "no GPU readings for this job's pods"
        out.conditions.append(ConditionChange(TELEMETRY_AVAILABLE, False, "NoSamples", reason))


# --- energy-fraction stages -----------------------------------------------------------------------------
def _energy_fraction(i: PolicyInputs, out: PolicyOutcome) -> None:
    budget = i.spec.energy.energy_budget
    if budget is None:
        return
    fraction = i.energy.kilowatt_hours / budget.kilowatt_hours
    out.control[c.CONTROL_ENERGY_FRACTION] = round(fraction, 6)
    done = {s.get("name") for s in i.workload.get(c.WORKLOAD_STAGES) or [] if isinstance(s, Mapping)}
    for stage in i.spec.compression.stages:
        if stage.trigger_kind == "energyFraction" and stage.name not in done and fraction >= stage.trigger_value:
            if out.control.get(c.CONTROL_STAGE_REQUESTED) != stage.name:
                out.control[c.CONTROL_STAGE_REQUESTED] = stage.name
                out.events.append(
                    Event("Normal", "StageRequested", f"stage {stage.name}: {fraction:.0%} of the energy budget used")
                )
                out.decisions.append("stage")
            return


# --- drains (checkpoint before stopping pods) ------------------------------------------------------------
def _drain(i: PolicyInputs, out: PolicyOutcome, reason: str) -> bool:
    """Ask for a checkpoint for ``reason``; True once it is safe to stop the pods."""
    drain = out.policy.get("drain")
    if not isinstance(drain, Mapping) or drain.get("reason") != reason:
        if i.spec.checkpoint is None or not i.pods_exist:
            return True
        seq = int(out.control.get(c.CONTROL_CHECKPOINT_REQUESTED) or 0) + 1
        out.control[c.CONTROL_CHECKPOINT_REQUESTED] = seq
        out.policy["drain"] = {"reason": reason, "requested": seq, "since": i.now_seconds}
        out.events.append(Event("Normal", "CheckpointRequested", f"checkpoint {seq} requested before {reason}"))
        out.decisions.append("checkpoint")
        return False
    ack = (i.workload.get(c.WORKLOAD_CHECKPOINT) or {}).get("acknowledged")
    if isinstance(ack, int) and ack >= int(drain.get("requested") or 0):
        return True
    if not i.pods_exist:
        return True
    if i.now_seconds - float(drain.get("since") or 0) >= i.settings.checkpoint_timeout_seconds:
        out.events.append(
            Event("Warning", "CheckpointTimeout", f"no checkpoint acknowledged within "
                  f"{i.settings.checkpoint_timeout_seconds:.0f} s; going on with {reason}")
        )
        return True
    return False


def _finish_drain(i: PolicyInputs, out: PolicyOutcome) -> None:
    drain = out.policy.get("drain")
    if isinstance(drain, Mapping) and drain.get("done"):
        out.policy.pop("drain", None)


def _mark_drained(out: PolicyOutcome) -> None:
    drain = out.policy.get("drain")
    if isinstance(drain, dict):
        drain["done"] = True


# --- energy budget ----------------------------------------------------------------------------------------
def _budget(i: PolicyInputs, out: PolicyOutcome) -> None:
    budget = i.spec.energy.energy_budget
    if budget is None:
        return
    used = i.energy.kilowatt_hours
    exceeded = used >= budget.kilowatt_hours
    message = f"{used:.6f} kWh used of a {budget.kilowatt_hours:g} kWh budget (action {budget.action})"
    if not exceeded:
        if out.policy.pop("budgetSuspended", None):
            out.events.append(Event("Normal", "BudgetRaised", f"energy budget no longer exceeded: {message}"))
            out.decisions.append("resume")
        if out.policy.pop("budgetNotified", None) is not None or budget.action != "Notify":
            out.conditions.append(ConditionChange(BUDGET_EXCEEDED, False, "WithinBudget", message))
        return
    out.conditions.append(ConditionChange(BUDGET_EXCEEDED, True, "EnergyBudgetExceeded", message))
    if budget.action == "Notify":
        if not out.policy.get("budgetNotified"):
            out.policy["budgetNotified"] = True
            out.events.append(Event("Warning", "EnergyBudgetExceeded", message))
            out.decisions.append("notify")
        return
    if budget.action == "Suspend":
        if out.policy.get("budgetSuspended"):
            out.hold = "Suspended"
            return
        if _drain(i, out, DRAIN_BUDGET_SUSPEND):
            _mark_drained(out)
            out.policy["budgetSuspended"] = True
            out.hold = "Suspended"
            out.events.append(Event("Warning", "EnergyBudgetExceeded", f"suspending: {message}"))
            out.decisions.append("suspend")
        return
    out.control[c.CONTROL_STOP_REQUESTED] = True
    if _drain(i, out, DRAIN_BUDGET_STOP):
        _mark_drained(out)
        out.fail = ("EnergyBudgetExceeded", message)
        out.decisions.append("stop")


# --- carbon -----------------------------------------------------------------------------------------------
def _carbon(i: PolicyInputs, out: PolicyOutcome) -> None:
    carbon = i.spec.energy.carbon
    if carbon is None or carbon.max_grams_per_kwh is None:
        return
    paused = bool(out.policy.get("carbonPaused"))
    since = float(out.policy.get("carbonSince") or 0.0)
    dwell_ok = i.now_seconds - since >= carbon.min_dwell_seconds
    intensity = i.intensity_grams_per_kwh
    if intensity is None:
        if paused:
            out.hold = "Paused"
        return
    limit = carbon.max_grams_per_kwh
    if paused:
        if intensity <= limit and dwell_ok:
            out.policy["carbonPaused"] = False
            out.policy["carbonSince"] = i.now_seconds
            message = f"carbon intensity {intensity:g} g/kWh <= {limit:g}: resuming"
            out.conditions.append(ConditionChange(PAUSED, False, "CarbonIntensityLow", message))
            out.events.append(Event("Normal", "Resumed", message))
            out.decisions.append("resume")
            return
        out.hold = "Paused"
        return
    if intensity > limit and dwell_ok and _drain(i, out, DRAIN_CARBON):
        _mark_drained(out)
        out.policy["carbonPaused"] = True
        out.policy["carbonSince"] = i.now_seconds
        message = f"carbon intensity {intensity:g} g/kWh > {limit:g}: pausing"
        out.conditions.append(ConditionChange(PAUSED, True, "CarbonIntensityHigh", message))
        out.events.append(Event("Normal", "Paused", message))
        out.decisions.append("pause")
        out.hold = "Paused"


# --- reschedule on node power pressure ---------------------------------------------------------------------
def _reschedule(i: PolicyInputs, out: PolicyOutcome) -> None:
    placement = i.spec.energy.placement
    if out.placement.get("rescheduling") and not i.pods_exist:
        out.placement["rescheduling"] = False
    if not placement.reschedule_on_power_pressure or not i.pressured_nodes:
        return
    nodes = sorted(set(i.pressured_nodes))
    if _drain(i, out, DRAIN_RESCHEDULE):
        _mark_drained(out)
        avoided = sorted(set(out.placement.get("avoidedNodes") or []) | set(nodes))
        out.placement["avoidedNodes"] = avoided
        out.placement["reschedules"] = int(out.placement.get("reschedules") or 0) + 1
        out.placement["lastReason"] = f"power pressure on {', '.join(nodes)}"
        out.placement["lastTime"] = i.now_seconds
        out.placement["rescheduling"] = True
        out.recreate_pods = True
        message = f"node power pressure on {', '.join(nodes)}: moving the job's pods"
        out.conditions.append(ConditionChange(RESCHEDULING, True, "NodePowerPressure", message))
        out.events.append(Event("Normal", "Rescheduling", message))
        out.decisions.append("reschedule")


# --- throttle -----------------------------------------------------------------------------------------------
def _throttle(i: PolicyInputs, out: PolicyOutcome) -> None:
    budget = i.spec.energy.power.budget_watts
    key = c.CONTROL_POWER_LIMIT_WATTS_PER_GPU
    current = out.control.get(key)
    out.throttled = current is not None
    if budget is None:
        if current is not None:
            out.control[key] = None
            out.throttled = False
            out.conditions.append(ConditionChange(THROTTLED, False, "NoBudget", "spec.energy.power.budgetWatts unset"))
        return
    if not i.fresh_telemetry or not i.telemetry_ok or i.gpu_count <= 0:
        return  # never decide on stale or missing data; keep whatever cap is in force
    s = i.settings
    limit, reachable = throttle_limit(budget, i.gpu_count, s.gpu_min_limit_watts, s.gpu_max_limit_watts)
    watts = i.energy.current_watts
    if current is None:
        if watts > budget:
            out.control[key] = limit
            out.policy["lowCycles"] = 0
            out.throttled = True
            note = "" if reachable else f" (the budget is below {i.gpu_count} GPUs x {s.gpu_min_limit_watts} W)"
            message = f"job draws {watts:.0f} W over its {budget} W budget: {limit} W per GPU{note}"
            out.conditions.append(ConditionChange(THROTTLED, True, "PowerBudget", message))
            out.events.append(Event("Normal", "Throttled", message))
            out.decisions.append("throttle")
        return
    if current != limit:  # the budget or the GPU count changed
        out.control[key] = limit
        out.conditions.append(
            ConditionChange(THROTTLED, True, "PowerBudget", f"{limit} W per GPU for a {budget} W budget")
        )
        out.decisions.append("throttle")
    if watts < s.release_fraction * budget:
        low = int(out.policy.get("lowCycles") or 0) + 1
        out.policy["lowCycles"] = low
        if low >= s.release_after_cycles:
            out.control[key] = None
            out.policy["lowCycles"] = 0
            out.throttled = False
            message = f"job draws {watts:.0f} W, under {s.release_fraction:.0%} of its {budget} W budget: cap released"
            out.conditions.append(ConditionChange(THROTTLED, False, "UnderBudget", message))
            out.events.append(Event("Normal", "ThrottleReleased", message))
            out.decisions.append("release")
    else:
        out.policy["lowCycles"] = 0
